"""The predictive model as it is trained, saved and served: per-input encodings, Ludwig's concat
combiner, and one head per output feature; plus the encoder references that say how the text
features were embedded.

Text features enter as pooled vectors: from the embedder's cache (frozen encoder) or from the
adapted encoder the PEFT recipe runs itself. Either way this module sees the same [n, d] tensor, so
the frozen and adapted recipes share the combiner, the heads, the losses and the artifact.
Training and `predict` share this class, so the artifact reproduces the trainer's own test-split
predictions exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from services.trainer.features import InputMetadata, OutputMetadata
from services.trainer.heads import FCStack, combiner_specs
from services.trainer.recipes.predictive.outputs import OutputHead
from tunewire.config.ecd import CombinerConfig, EcdConfig

HEAD_FILE = "head.safetensors"
METADATA_FILE = "training_set_metadata.json"
MANIFEST_FILE = "tunewire.json"
CONFIG_FILE = "resolved_config.json"
ADAPTER_DIR = "encoder_adapter"


@dataclass
class EncoderRef:
    """How a text feature's encoder runs: exactly the fields of the embedder's cache key, plus
    whether the trainer adapted it (then its LoRA weights sit in `encoder_adapter/`)."""

    model: str
    pooling: str
    max_length: int
    normalize: bool
    layer: int
    dtype: str = "float32"
    revision: str = ""
    fingerprint: str = ""
    dimension: int = 0
    feature: str = ""
    adapted: bool = False

    def spec(self):
        from clients.sdk import EncoderSpec

        return EncoderSpec(
            model=self.model,
            pooling=self.pooling,
            max_length=self.max_length,
            normalize=self.normalize,
            dtype=self.dtype,
            layer=self.layer,
            revision=self.revision,
        )


def encoder_refs(cfg: EcdConfig) -> dict[str, EncoderRef]:
    """feature name → EncoderRef, for every text input feature, in config order."""
    refs = {}
    for f in cfg.input_features:
        if f.type != "text":
            continue
        enc = f.encoder
        refs[f.name] = EncoderRef(
            model=enc.model,
            pooling=enc.pooling,
            max_length=int(enc.max_sequence_length or 0),
            normalize=enc.normalize,
            layer=enc.layer,
            revision=enc.revision or "",
            feature=f.name,
            adapted=enc.trainable,
        )
    return refs


@dataclass
class InputSpec:
    """What the model needs to size one input's encoding."""

    name: str
    type: str
    dimension: int = 0  # text: the pooled vector's width
    meta: InputMetadata | None = None  # number/binary/category
    encoder: dict = field(default_factory=dict)  # category: {type, embedding_size, dropout}


class CategoryInput(nn.Module):
    """Index → one-hot (onehot/sparse) or a learned embedding (dense); index 0 is <UNK>."""

    def __init__(self, vocab_size: int, kind: str, embedding_size: int, dropout: float) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_size) if kind == "dense" else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output_dim = embedding_size if kind == "dense" else vocab_size

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            return F.one_hot(index, self.vocab_size).float()
        return self.dropout(self.embedding(index))


def _input_width(spec: InputSpec) -> int:
    return spec.dimension if spec.type == "text" else 1


class PredictiveModel(nn.Module):
    def __init__(
        self, inputs: list[InputSpec], combiner: CombinerConfig, outputs: list[tuple]
    ) -> None:
        """`outputs`: [(OutputFeature, OutputMetadata)] in config order."""
        super().__init__()
        self.inputs = inputs
        self.categories = nn.ModuleDict()
        width = 0
        for spec in inputs:
            if spec.type == "category":
                assert spec.meta is not None
                module = CategoryInput(
                    len(spec.meta.vocab),
                    spec.encoder["type"],
                    int(spec.encoder["embedding_size"]),
                    float(spec.encoder["dropout"]),
                )
                self.categories[spec.name] = module
                width += module.output_dim
            else:
                width += _input_width(spec)
        self.combiner = FCStack(width, combiner_specs(combiner), bias=True)
        self.outputs = nn.ModuleDict(
            {f.name: OutputHead(self.combiner.output_dim, f, meta) for f, meta in outputs}
        )

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = []
        for spec in self.inputs:
            value = x[spec.name]
            if spec.name in self.categories:
                parts.append(self.categories[spec.name](value))
            else:
                parts.append(value if value.dim() == 2 else value[:, None])
        # One input (a text feature alone, the common case) needs no concatenating copy.
        hidden = self.combiner(parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1))
        return {name: head(hidden) for name, head in self.outputs.items()}

    def loss(
        self, out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(Σ weight · loss, each output's loss); an output without targets adds nothing."""
        parts = {
            name: head.loss(out[name], y[name]) for name, head in self.outputs.items() if name in y
        }
        total: torch.Tensor | None = None
        for name, value in parts.items():
            # Spelled out, not sum(w * v): no `0 +` and no `1.0 *` kernels in every step.
            weight = self.outputs[name].feature.loss.weight
            term = value if weight == 1 else weight * value
            total = term if total is None else total + term
        return total, parts  # type: ignore[return-value]


def input_specs(
    cfg: EcdConfig, metas: dict[str, InputMetadata], dims: dict[str, int]
) -> list[InputSpec]:
    specs = []
    for f in cfg.input_features:
        enc = {}
        if f.type == "category":
            enc = {
                "type": f.encoder.type,
                "embedding_size": f.encoder.embedding_size,
                "dropout": f.encoder.dropout,
            }
        specs.append(InputSpec(f.name, f.type, dims.get(f.name, 0), metas.get(f.name), enc))
    return specs


def save(
    model: PredictiveModel,
    directory: Path,
    *,
    encoders: dict[str, EncoderRef],
    config: dict,
    manifest_extra: dict,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        directory / HEAD_FILE,
    )
    metadata = {name: head.meta.to_dict() for name, head in model.outputs.items()}
    metadata["inputs"] = {s.name: s.meta.to_dict() for s in model.inputs if s.meta is not None}
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    first = next(iter(encoders.values()), None)
    manifest = {
        "format_version": 2,
        "kind": "predictive",
        "library": "tunewire",
        "base_model": first.model if first else None,
        "encoders": {k: v.__dict__ for k, v in encoders.items()},
        "head": {
            "inputs": [
                {"name": s.name, "type": s.type, "dimension": s.dimension} for s in model.inputs
            ],
            "outputs": list(model.outputs),
        },
        **manifest_extra,
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))


@dataclass
class Loaded:
    model: PredictiveModel
    encoders: dict[str, EncoderRef]
    config: EcdConfig
    manifest: dict


def load(directory: Path) -> Loaded:
    from tunewire.config import resolve

    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    config = resolve(json.loads((directory / CONFIG_FILE).read_text()))
    metadata = json.loads((directory / METADATA_FILE).read_text())
    state = load_file(directory / HEAD_FILE)
    if manifest.get("format_version", 1) == 1:
        manifest, state = _upgrade_v1(manifest, config, state)
    encoders = {k: EncoderRef(**v) for k, v in manifest["encoders"].items()}
    in_metas = {k: InputMetadata.from_dict(v) for k, v in metadata.get("inputs", {}).items()}
    dims = {k: e.dimension for k, e in encoders.items()}
    outputs = [(f, OutputMetadata.from_dict(metadata[f.name])) for f in config.output_features]
    model = PredictiveModel(input_specs(config, in_metas, dims), config.combiner, outputs)
    model.load_state_dict(state)
    model.eval()
    return Loaded(model, encoders, config, manifest)


def _upgrade_v1(
    manifest: dict, config: EcdConfig, state: dict[str, torch.Tensor]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Format 1 (one text input, one output, written before several features existed): the
    encoder under `encoder`, the head's keys unprefixed and no temperature. Read as format 2, so
    artifacts already in people's data directories keep predicting."""
    feature, output = config.input_features[0].name, config.output_features[0].name
    ref = {**manifest["encoder"], "feature": feature, "adapted": False}
    upgraded = {f"outputs.{output}.{k}": v for k, v in state.items()}
    upgraded[f"outputs.{output}.temperature"] = torch.tensor(1.0)
    return {**manifest, "format_version": 2, "encoders": {feature: ref}}, upgraded


@torch.no_grad()
def logits_in_batches(
    model: PredictiveModel, batch_inputs, n: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """Run the model over n rows, `batch_inputs(idx)` giving each batch's input tensors."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in model.outputs}
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        for name, value in model(batch_inputs(idx)).items():
            parts[name].append(value)
    return {name: torch.cat(v) for name, v in parts.items()}
