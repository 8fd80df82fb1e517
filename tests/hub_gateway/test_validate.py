"""Artifact kind detection and the list of what is missing."""

from __future__ import annotations

import json
import os

import pytest

from services.hub_gateway.validate import ArtifactKind, require_valid, validate
from tunewire.errors import InvalidArgument


def make(root, files: dict[str, str | bytes]):
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


TOKENIZER = {"tokenizer.json": "{}"}


def test_peft_adapter_complete(tmp_path):
    root = make(
        tmp_path / "a",
        {"adapter_config.json": "{}", "adapter_model.safetensors": b"x", **TOKENIZER},
    )
    result = validate(root)
    assert result.kind is ArtifactKind.PEFT_ADAPTER and result.ok


def test_peft_adapter_lists_every_missing_file(tmp_path):
    root = make(tmp_path / "a", {"adapter_config.json": "{}"})
    with pytest.raises(InvalidArgument) as info:
        require_valid(root)
    msg = str(info.value)
    assert "adapter_model.safetensors" in msg and "tokenizer.json" in msg
    assert info.value.field == "model_path"


def test_tokenizer_config_with_vocab_is_enough(tmp_path):
    root = make(
        tmp_path / "a",
        {
            "adapter_config.json": "{}",
            "adapter_model.bin": b"x",
            "tokenizer_config.json": "{}",
            "vocab.json": "{}",
        },
    )
    assert validate(root).ok
    (root / "vocab.json").unlink()
    assert validate(root).missing


@pytest.mark.parametrize("weights", [{"model.safetensors": b"x"}, {"pytorch_model.bin": b"x"}])
def test_full_model_single_file(tmp_path, weights):
    root = make(tmp_path / "m", {"config.json": "{}", **weights, **TOKENIZER})
    result = validate(root)
    assert result.kind is ArtifactKind.FULL_MODEL and result.ok


def test_sharded_model_checks_every_shard_named_by_the_index(tmp_path):
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    root = make(
        tmp_path / "m",
        {
            "config.json": "{}",
            **TOKENIZER,
            "model.safetensors.index.json": json.dumps(index),
            "model-00001-of-00002.safetensors": b"x",
        },
    )
    result = validate(root)
    assert result.missing == [
        "model-00002-of-00002.safetensors (named by model.safetensors.index.json)"
    ]
    make(root, {"model-00002-of-00002.safetensors": b"y"})
    assert validate(root).ok


def test_shards_without_index(tmp_path):
    root = make(
        tmp_path / "m", {"config.json": "{}", **TOKENIZER, "model-00001-of-00001.safetensors": b"x"}
    )
    assert validate(root).missing == [
        "model.safetensors.index.json (the index of the sharded weights)"
    ]


def test_full_model_without_weights_or_tokenizer(tmp_path):
    missing = validate(make(tmp_path / "m", {"config.json": "{}"})).missing
    assert len(missing) == 2 and missing[0].startswith("model.safetensors")


def test_predictive_artifact(tmp_path):
    root = make(
        tmp_path / "p",
        {"tunewire.json": json.dumps({"kind": "predictive"}), "head.safetensors": b"x"},
    )
    result = validate(root)
    assert result.kind is ArtifactKind.PREDICTIVE
    assert result.missing == ["training_set_metadata.json"]


def test_unknown_kind_and_non_model_folders_are_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="unknown kind"):
        validate(make(tmp_path / "k", {"tunewire.json": json.dumps({"kind": "cat"})}))
    with pytest.raises(InvalidArgument, match="not a model artifact"):
        validate(make(tmp_path / "n", {"notes.txt": "hi"}))


def test_symlink_out_of_the_artifact_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not publish")
    root = make(
        tmp_path / "a",
        {"adapter_config.json": "{}", "adapter_model.safetensors": b"x", **TOKENIZER},
    )
    os.symlink(secret, root / "extra.txt")
    with pytest.raises(InvalidArgument, match="links outside"):
        validate(root)


def test_tooling_dirs_are_not_artifact_files(tmp_path):
    root = make(
        tmp_path / "a",
        {
            "adapter_config.json": "{}",
            "adapter_model.safetensors": b"x",
            **TOKENIZER,
            ".git/HEAD": "ref",
            "__pycache__/x.pyc": b"x",
        },
    )
    assert validate(root).files == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
    ]
