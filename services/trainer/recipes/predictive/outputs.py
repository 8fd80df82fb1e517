"""One output feature's head: decoder MLP, loss, probabilities, predictions and metrics.

The head returns raw logits; `scores()` turns them into what people read (probabilities for
binary/category/set, values on the original scale for number/vector), dividing by the fitted
temperature first where the feature asked for `calibration`. The temperature is a buffer, so it
travels in `head.safetensors` with the weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from services.trainer import metrics as M
from services.trainer.features import OutputMetadata, decode_number
from services.trainer.heads import MLPHead, layer_specs
from tunewire.config.ecd import OutputFeature
from tunewire.errors import InvalidArgument


def output_size(meta: OutputMetadata) -> int:
    if meta.type in ("category", "set"):
        return len(meta.vocab)
    return meta.size if meta.type == "vector" else 1


def class_weights(feature: OutputFeature, meta: OutputMetadata, path: str) -> list[float]:
    """One weight per class in vocabulary order; `path` is the feature's config path."""
    weights = feature.loss.class_weights
    if isinstance(weights, dict):
        unknown = sorted(set(map(str, weights)) - set(meta.vocab))
        if unknown:
            raise InvalidArgument(
                f"class {unknown[0]!r} is not in the training labels ({', '.join(meta.vocab[:6])})",
                field=f"{path}.loss.class_weights",
            )
        return [float(weights.get(c, 1.0)) for c in meta.vocab]
    if weights and len(weights) != output_size(meta):
        raise InvalidArgument(
            f"has {len(weights)} weights for {output_size(meta)} classes "
            f"({', '.join(meta.vocab[:6])})",
            field=f"{path}.loss.class_weights",
        )
    return [float(w) for w in weights] if weights else [1.0] * output_size(meta)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float,
    weight: torch.Tensor | None = None,
    binary: bool = False,
) -> torch.Tensor:
    """Lin et al.'s focal loss: cross-entropy scaled by (1 - p_true)^gamma, so the many easy
    examples of the majority class stop drowning the few hard ones."""
    if binary:
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p_true = torch.exp(-ce)
        alpha = 1.0 if weight is None else torch.where(target > 0.5, weight, 1.0)
        return (alpha * (1 - p_true) ** gamma * ce).mean()
    logp = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
    scale = (1 - logp.exp()) ** gamma
    w = 1.0 if weight is None else weight[target]
    return (-(w * scale * logp)).sum() / (w.sum() if weight is not None else len(target))


class OutputHead(nn.Module):
    def __init__(self, input_dim: int, feature: OutputFeature, meta: OutputMetadata) -> None:
        super().__init__()
        self.feature = feature
        self.meta = meta
        dec = feature.decoder
        self.head = MLPHead(
            input_dim,
            output_size(meta),
            layer_specs(dec),
            norm=dec.fc_norm,
            bias=dec.fc_use_bias,
            out_bias=dec.use_bias,
        )
        self.register_buffer(
            "pos_weight", torch.tensor(float(feature.loss.positive_class_weight or 1.0))
        )
        self.register_buffer(
            "class_weights",
            torch.tensor(class_weights(feature, meta, "output_features"), dtype=torch.float32),
        )
        self.register_buffer("temperature", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(x)
        return (
            out.squeeze(-1) if output_size(self.meta) == 1 and self.meta.type != "vector" else out
        )

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kind = self.feature.loss.type
        if kind == "binary_weighted_cross_entropy":
            return F.binary_cross_entropy_with_logits(out, target, pos_weight=self.pos_weight)
        if kind == "softmax_cross_entropy":
            return F.cross_entropy(out, target, weight=self.class_weights)
        if kind == "sigmoid_cross_entropy":
            # Per-class weights scale the positives of each label (rare labels count more).
            return F.binary_cross_entropy_with_logits(out, target, pos_weight=self.class_weights)
        if kind == "focal":
            binary = self.meta.type == "binary"
            weight = self.pos_weight if binary else self.class_weights
            return focal_loss(out, target, self.feature.loss.gamma, weight, binary=binary)
        if kind == "mean_absolute_error":
            return F.l1_loss(out, target)
        if kind == "huber":
            return F.huber_loss(out, target, delta=self.feature.loss.delta)
        return F.mse_loss(out, target)

    def scores(self, logits: torch.Tensor) -> np.ndarray:
        """Logits → P(true) (binary), softmax (category), per-label sigmoid (set), or values on
        the original scale (number, vector). `logits` on the CPU; the head may sit on a GPU."""
        kind = self.meta.type
        temperature = float(self.temperature)
        if kind == "binary":
            return torch.sigmoid(logits / temperature).numpy()
        if kind == "category":
            return torch.softmax(logits / temperature, dim=-1).numpy()
        if kind == "set":
            return torch.sigmoid(logits).numpy()
        return decode_number(logits.numpy().astype(np.float64), self.meta)

    def decode(self, scores: np.ndarray) -> tuple[list[str], np.ndarray | None, list[str]]:
        """Scores → (predictions as text, probabilities [n, classes], class names)."""
        kind, vocab = self.meta.type, self.meta.vocab
        if kind == "binary":
            probs = np.stack([1.0 - scores, scores], axis=1).astype(np.float32)
            return ([vocab[int(s >= self.feature.threshold)] for s in scores], probs, list(vocab))
        if kind == "category":
            return (
                [vocab[i] for i in scores.argmax(axis=1)],
                scores.astype(np.float32),
                list(vocab),
            )
        sep = self.meta.separator or " "
        if kind == "set":
            preds = [
                sep.join(vocab[j] for j in np.flatnonzero(row >= self.feature.threshold))
                for row in scores
            ]
            return preds, scores.astype(np.float32), list(vocab)
        if kind == "vector":
            return [sep.join(repr(float(v)) for v in row) for row in scores], None, []
        return [repr(float(v)) for v in scores], None, []

    def metrics(self, scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Metrics on the original scale; `targets` as encoded by features.encode_output."""
        kind = self.meta.type
        if kind == "binary":
            return M.binary_metrics(targets, scores, self.feature.threshold)
        if kind == "category":
            return M.category_metrics(targets, scores, self.feature.top_k)
        if kind == "set":
            return M.set_metrics(targets, scores, self.feature.threshold)
        if kind == "vector":
            return M.number_metrics(targets.astype(np.float64), scores)
        return M.number_metrics(decode_number(targets.astype(np.float64), self.meta), scores)
