"""Fixtures: the test Hub, a gateway on port 0 pointed at it, and tiny real models to upload."""

from __future__ import annotations

import os

# Before huggingface_hub is imported anywhere: the test Hub speaks LFS, not Xet.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.hubserver import TestHub, allow_test_hub  # noqa: E402

TOKEN = "hf_test_SECRET_token_4f9c2a"


@pytest.fixture(autouse=True)
def _test_hub_reachable(monkeypatch):
    # Covers a session where another test module imported huggingface_hub before this conftest,
    # and the offline mode that scripts/test.sh sets for the whole run.
    allow_test_hub(monkeypatch)


@pytest.fixture
def hub(tmp_path):
    server = TestHub(tmp_path / "hub", tokens={TOKEN})
    yield server
    server.close()


@pytest.fixture
def artifact_root(tmp_path) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    return root


def start_gateway(tmp_path: Path, hub: TestHub, **settings):
    """A gateway on port 0 in front of the test Hub, with the Hub's token; `settings` adds or
    overrides the other `Settings` fields. The caller closes it."""
    from services.hub_gateway.app import Settings, start

    fields = {"data_dir": tmp_path / "gw", "port": 0, "endpoint": hub.endpoint, "token": TOKEN}
    return start(Settings(**{**fields, **settings}))


@pytest.fixture
def gateway(tmp_path, hub, artifact_root):
    app = start_gateway(tmp_path, hub, artifact_roots=[artifact_root])
    yield app
    app.close(grace=1.0)


@pytest.fixture
def gateway_address(gateway) -> str:
    return f"127.0.0.1:{gateway.port}"


def _build_tiny_models(root: Path) -> tuple[Path, Path]:
    """A random 2-layer Llama with a BPE tokenizer trained here, and a LoRA adapter on it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    sentences = [
        "the quick brown fox jumps over the lazy dog",
        "tunewire uploads models to the hub in one commit",
        "a tiny llama learns nothing but loads everywhere",
    ] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        sentences,
        trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>", "<pad>"]),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    full = root / "full"
    model.save_pretrained(full)
    tokenizer.save_pretrained(full)
    peft_model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    adapter = root / "adapter"
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    return full, adapter


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[Path, Path]:
    return _build_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def full_model(tiny_models, tmp_path) -> Path:
    """A private copy per test, so tests may add or change files."""
    return Path(shutil.copytree(tiny_models[0], tmp_path / "full_model"))


@pytest.fixture
def adapter_model(tiny_models, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_models[1], tmp_path / "adapter_model"))
