"""What kind of artifact a folder holds, and what it lacks to be loadable.

Runs before anything is sent so that a user learns every missing file at once, instead of
discovering on the Hub that `from_pretrained` fails. Works on a set of relative paths plus a
reader for the few JSON files it must open, so the same checks serve a folder on disk and files
streamed over gRPC into a staging folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from tunewire.artifact_files import list_files
from tunewire.errors import InvalidArgument


class ArtifactKind(str, Enum):
    PEFT_ADAPTER = "peft_adapter"
    FULL_MODEL = "full_model"
    PREDICTIVE = "predictive"
    ZERO_SHOT = "zero_shot"  # trainer.type none: predictions and metrics, no weights


_SHARD = re.compile(r"^(model|pytorch_model)-\d{5}-of-(\d{5})\.(safetensors|bin)$")
_VOCAB_FILES = (
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


@dataclass
class Validation:
    """The outcome of validating one artifact: its kind and every relative path it contains."""

    kind: ArtifactKind
    files: list[str]
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing


def _read_json(root: Path, name: str) -> dict[str, Any] | None:
    path = root / name
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{name} is not valid JSON: {exc}", field="model_path") from exc
    if not isinstance(value, dict):
        raise InvalidArgument(f"{name} must hold a JSON object", field="model_path")
    return value


def detect_kind(root: Path, names: set[str]) -> ArtifactKind:
    """tunewire.json's `kind` wins; otherwise PEFT's adapter_config.json, then a transformers
    config or weights. Raises InvalidArgument when nothing looks like a model."""
    meta = _read_json(root, "tunewire.json")
    if meta is not None and meta.get("kind"):
        try:
            return ArtifactKind(meta["kind"])
        except ValueError:
            raise InvalidArgument(
                f"tunewire.json has unknown kind {meta['kind']!r}; expected one of "
                f"{', '.join(k.value for k in ArtifactKind)}",
                field="model_path",
            ) from None
    if "adapter_config.json" in names or any(n.startswith("adapter_model.") for n in names):
        return ArtifactKind.PEFT_ADAPTER
    if "config.json" in names or any(n.startswith(("model", "pytorch_model")) for n in names):
        return ArtifactKind.FULL_MODEL
    raise InvalidArgument(
        "not a model artifact: expected adapter_config.json (PEFT adapter), config.json with "
        "weights (full model) or tunewire.json (predictive)",
        field="model_path",
    )


def _missing_tokenizer(names: set[str]) -> list[str]:
    if "tokenizer.json" in names:
        return []
    if "tokenizer_config.json" in names and any(v in names for v in _VOCAB_FILES):
        return []
    return ["tokenizer.json (or tokenizer_config.json with a vocabulary file)"]


def _missing_full_model_weights(root: Path, names: set[str]) -> list[str]:
    if "model.safetensors" in names or "pytorch_model.bin" in names:
        return []
    missing = []
    indexed = False
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = _read_json(root, index_name) if index_name in names else None
        if index is None:
            continue
        indexed = True
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            missing.append(f"{index_name} names no shards (empty weight_map)")
        missing.extend(f"{shard} (named by {index_name})" for shard in shards if shard not in names)
    if indexed:
        return missing
    shards = [n for n in names if _SHARD.match(n)]
    if shards:
        stem = _SHARD.match(shards[0]).group(1)  # type: ignore[union-attr]
        ext = _SHARD.match(shards[0]).group(3)  # type: ignore[union-attr]
        return [f"{stem}.{ext}.index.json (the index of the sharded weights)"]
    return [
        "model.safetensors (or sharded model-0000x-of-0000y.safetensors with "
        "model.safetensors.index.json, or pytorch_model.bin)"
    ]


def validate(root: Path) -> Validation:
    """Detect the artifact kind under `root` and list what it lacks (empty when loadable)."""
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory", field="model_path")
    files = list_files(root)
    names = set(files)
    kind = detect_kind(root, names)
    if kind is ArtifactKind.ZERO_SHOT:
        raise InvalidArgument(
            "a zero-shot artifact (trainer.type none) holds no trained weights, only a reference "
            "to its base model and its predictions: there is nothing to upload",
            field="model_path",
            reason="NOTHING_TRAINED",
        )
    missing: list[str] = []
    if kind is ArtifactKind.PEFT_ADAPTER:
        if "adapter_config.json" not in names:
            missing.append("adapter_config.json")
        if not {"adapter_model.safetensors", "adapter_model.bin"} & names:
            missing.append("adapter_model.safetensors (or adapter_model.bin)")
        missing += _missing_tokenizer(names)
    elif kind is ArtifactKind.FULL_MODEL:
        if "config.json" not in names:
            missing.append("config.json")
        missing += _missing_full_model_weights(root, names)
        missing += _missing_tokenizer(names)
    else:
        missing += [
            n
            for n in ("tunewire.json", "head.safetensors", "training_set_metadata.json")
            if n not in names
        ]
    return Validation(kind=kind, files=files, missing=missing)


def require_valid(root: Path) -> Validation:
    """`validate`, raising InvalidArgument that lists every missing file when it is not loadable."""
    result = validate(root)
    if result.missing:
        raise InvalidArgument(
            f"{result.kind.value} artifact is missing: {'; '.join(result.missing)}",
            field="model_path",
            reason="ARTIFACT_INCOMPLETE",
        )
    return result
