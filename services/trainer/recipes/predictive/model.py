"""The predictive model as it is trained, saved and served: an encoder reference, a head, and
the output metadata that turns head outputs into predictions.

Training and `predict` share this class, so the artifact reproduces the trainer's own test-split
predictions exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from tunewire.config.ecd import EcdConfig, OutputFeature
from services.trainer import metrics as M
from services.trainer.features import OutputMetadata, decode_number
from services.trainer.heads import MLPHead, layer_specs

HEAD_FILE = "head.safetensors"
METADATA_FILE = "training_set_metadata.json"
MANIFEST_FILE = "tunewire.json"
CONFIG_FILE = "resolved_config.json"


@dataclass
class EncoderRef:
    """How the embedder must run the encoder: exactly the fields of its cache key."""

    model: str
    pooling: str
    max_length: int
    normalize: bool
    layer: int
    dtype: str = "float32"
    revision: str = ""
    fingerprint: str = ""
    dimension: int = 0

    def spec(self):
        from clients.sdk import EncoderSpec

        return EncoderSpec(model=self.model, pooling=self.pooling, max_length=self.max_length,
                           normalize=self.normalize, dtype=self.dtype, layer=self.layer,
                           revision=self.revision)


def encoder_ref(cfg: EcdConfig) -> EncoderRef:
    enc = cfg.input_features[0].encoder
    return EncoderRef(model=enc.model, pooling=enc.pooling,
                      max_length=int(enc.max_sequence_length or 0), normalize=enc.normalize,
                      layer=enc.layer, revision=enc.revision or "")


def output_size(meta: OutputMetadata) -> int:
    return len(meta.vocab) if meta.type == "category" else 1


class PredictiveModel(nn.Module):
    def __init__(self, input_dim: int, feature: OutputFeature, meta: OutputMetadata) -> None:
        super().__init__()
        self.feature = feature
        self.meta = meta
        self.head = MLPHead(input_dim, output_size(meta), layer_specs(feature.decoder),
                            norm=feature.decoder.fc_norm, bias=feature.decoder.fc_use_bias)
        self.register_buffer("pos_weight", torch.tensor(
            float(feature.loss.positive_class_weight or 1.0)))
        weights = feature.loss.class_weights
        if isinstance(weights, dict):
            weights = [float(weights.get(c, 1.0)) for c in meta.vocab]
        self.register_buffer("class_weights", torch.tensor(
            weights if weights else [1.0] * output_size(meta), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(x)
        return out.squeeze(-1) if self.meta.type != "category" else out

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kind = self.feature.loss.type
        if kind == "binary_weighted_cross_entropy":
            return F.binary_cross_entropy_with_logits(out, target, pos_weight=self.pos_weight)
        if kind == "softmax_cross_entropy":
            return F.cross_entropy(out, target, weight=self.class_weights)
        if kind == "mean_absolute_error":
            return F.l1_loss(out, target)
        if kind == "huber":
            return F.huber_loss(out, target, delta=self.feature.loss.delta)
        return F.mse_loss(out, target)

    @torch.no_grad()
    def infer(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Raw head outputs → probabilities (binary: P(true); category: softmax) or numbers."""
        self.eval()
        outs = [self(torch.from_numpy(np.asarray(x[i:i + batch_size], dtype=np.float32)))
                for i in range(0, len(x), batch_size)]
        out = torch.cat(outs) if outs else torch.empty(0)
        if self.meta.type == "binary":
            return torch.sigmoid(out).numpy()
        if self.meta.type == "category":
            return torch.softmax(out, dim=-1).numpy()
        return decode_number(out.numpy().astype(np.float64), self.meta)

    def decode(self, scores: np.ndarray) -> tuple[list[str], np.ndarray | None, list[str]]:
        """Scores from `infer` → (predictions as text, probabilities [n, classes], class names)."""
        if self.meta.type == "binary":
            probs = np.stack([1.0 - scores, scores], axis=1).astype(np.float32)
            preds = [self.meta.vocab[int(s >= self.feature.threshold)] for s in scores]
            return preds, probs, list(self.meta.vocab)
        if self.meta.type == "category":
            return ([self.meta.vocab[i] for i in scores.argmax(axis=1)],
                    scores.astype(np.float32), list(self.meta.vocab))
        return [repr(float(v)) for v in scores], None, []

    def metrics(self, scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Metrics on the original scale; `targets` as encoded by features.encode_output."""
        if self.meta.type == "binary":
            return M.binary_metrics(targets, scores, self.feature.threshold)
        if self.meta.type == "category":
            return M.category_metrics(targets, scores, self.feature.top_k)
        return M.number_metrics(decode_number(targets.astype(np.float64), self.meta), scores)


def save(model: PredictiveModel, directory: Path, *, encoder: EncoderRef, config: dict,
         manifest_extra: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / HEAD_FILE)
    (directory / METADATA_FILE).write_text(json.dumps(
        {model.meta.name: model.meta.to_dict()}, indent=2))
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    manifest = {"format_version": 1, "kind": "predictive", "library": "tunewire",
                "base_model": encoder.model, "encoder": encoder.__dict__,
                "head": {"input_dim": encoder.dimension, "output_feature": model.feature.name},
                **manifest_extra}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def load(directory: Path) -> tuple[PredictiveModel, EncoderRef, EcdConfig, dict]:
    from tunewire.config import resolve

    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    config = resolve(json.loads((directory / CONFIG_FILE).read_text()))
    metadata = json.loads((directory / METADATA_FILE).read_text())
    feature = config.output_features[0]
    meta = OutputMetadata.from_dict(metadata[feature.name])
    encoder = EncoderRef(**manifest["encoder"])
    model = PredictiveModel(encoder.dimension, feature, meta)
    model.load_state_dict(load_file(directory / HEAD_FILE))
    model.eval()
    return model, encoder, config, manifest
