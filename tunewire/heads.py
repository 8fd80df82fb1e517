"""The predictive head: its definition, its artifact on disk and its forward pass, shared by the
trainer (which fits and saves it) and the embedder (which serves it next to the encoder and its
cache). Nothing here imports a service.

The model as it is trained, saved and served: per-input encodings, Ludwig's concat combiner (an fc
stack), and one head per output feature (decoder fc stack + projection); plus the encoder
references that say how the text features were embedded. Text features enter as pooled vectors:
from the embedder's cache (frozen encoder) or from the adapted encoder the PEFT recipe runs
itself. Either way the model sees the same [n, d] tensor, so the frozen and adapted recipes share
the combiner, the heads, the losses and the artifact, and the artifact reproduces the trainer's own
test-split predictions exactly.

Each output head returns raw logits; `OutputHead.scores()` turns them into what people read
(probabilities for binary/category/set, values on the original scale for number/vector), dividing
by the fitted temperature first where the feature asked for `calibration`. The temperature is a
buffer, so it travels in `head.safetensors` with the weights. `FeatureOutput` and
`ludwig_columns()` give the outputs Ludwig's names.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from tunewire.config.ecd import CombinerConfig, DecoderConfig, EcdConfig, OutputFeature, parse_ecd
from tunewire.encoder_spec import EncoderSpec
from tunewire.errors import FailedPrecondition, InvalidArgument
from tunewire.features import InputMetadata, OutputMetadata, decode_number
from tunewire.model_init import building_modules

# ------------------------------------------------------------------------------- fc stacks
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _specs(
    fc_layers: list[dict] | None, count: int, size: int, dropout: float, activation: str
) -> list[dict]:
    if fc_layers is not None:
        return [
            {
                "output_size": int(l.get("output_size", size)),
                "dropout": float(l.get("dropout", dropout)),
                "activation": l.get("activation", activation),
            }
            for l in fc_layers  # noqa: E741
        ]
    return [{"output_size": size, "dropout": dropout, "activation": activation}] * count


def layer_specs(cfg: DecoderConfig) -> list[dict]:
    """A decoder's hidden layers as [{output_size, dropout, activation}]."""
    return _specs(
        cfg.fc_layers, cfg.num_fc_layers, cfg.fc_output_size, cfg.fc_dropout, cfg.fc_activation
    )


def combiner_specs(cfg: CombinerConfig) -> list[dict]:
    """The concat combiner's hidden layers, from fc_layers or num_fc_layers/output_size."""
    return _specs(cfg.fc_layers, cfg.num_fc_layers, cfg.output_size, cfg.dropout, cfg.activation)


def dense(input_dim: int, output_dim: int, bias: bool = True) -> nn.Linear:
    """A linear layer initialised as Ludwig's defaults are (`weights_initializer:
    xavier_uniform`, `bias_initializer: zeros`), not torch's; a saved Ludwig config carries those
    keys at their defaults and is accepted because this honours them."""
    layer = nn.Linear(input_dim, output_dim, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


class FCStack(nn.Module):
    """[Linear → (norm) → activation → dropout] × n; `output_dim` is the last width."""

    def __init__(
        self, input_dim: int, layers: list[dict], norm: str | None = None, bias: bool = True
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        dim = input_dim
        for spec in layers:
            blocks.append(dense(dim, spec["output_size"], bias=bias))
            if norm == "layer":
                blocks.append(nn.LayerNorm(spec["output_size"]))
            elif norm == "batch":
                blocks.append(nn.BatchNorm1d(spec["output_size"]))
            if spec["activation"] not in _ACTIVATIONS:
                raise ValueError(f"unknown activation {spec['activation']!r}")
            blocks.append(_ACTIVATIONS[spec["activation"]]())
            if spec["dropout"] > 0:
                blocks.append(nn.Dropout(spec["dropout"]))
            dim = spec["output_size"]
        self.body = nn.Sequential(*blocks)
        self.output_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MLPHead(nn.Module):
    """input_dim → FCStack → Linear(out_dim). `out_bias=False` makes a head that a stock
    `*ForSequenceClassification` checkpoint (whose `score` has no bias) can hold exactly."""

    def __init__(
        self,
        input_dim: int,
        out_dim: int,
        layers: list[dict],
        norm: str | None = None,
        bias: bool = True,
        out_bias: bool = True,
    ) -> None:
        super().__init__()
        stack = FCStack(input_dim, layers, norm=norm, bias=bias)
        self.body = stack.body
        self.out = dense(stack.output_dim, out_dim, bias=out_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


# ---------------------------------------------------------------------------- output heads
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


# ------------------------------------------------------------------ the model and its artifact
HEAD_FILE = "head.safetensors"
METADATA_FILE = "training_set_metadata.json"
MANIFEST_FILE = "tunewire.json"
CONFIG_FILE = "resolved_config.json"
ADAPTER_DIR = "encoder_adapter"


@dataclass
class EncoderRef:
    """A text feature's encoder in an artifact: the embedder's spec it was trained on (its cache
    key), plus what only the manifest records: the encoder's fingerprint and output width, the
    feature it encodes, and whether the trainer adapted it (then its LoRA weights sit in
    `encoder_adapter/`)."""

    spec: EncoderSpec
    feature: str = ""
    adapted: bool = False
    fingerprint: str = ""
    dimension: int = 0

    def to_manifest(self) -> dict:
        """The manifest's flat record (format 2): the spec's fields beside the ref's own.
        `instruction` is written only when set (no trained encoder has one), so the record stays
        the one every format-2 reader knows."""
        spec = dataclasses.asdict(self.spec)
        if not spec["instruction"]:
            del spec["instruction"]
        return {
            **spec,
            "fingerprint": self.fingerprint,
            "dimension": self.dimension,
            "feature": self.feature,
            "adapted": self.adapted,
        }

    def check_fingerprint(self, fingerprint: str) -> None:
        """Refuse vectors from an encoder other than the one the head was trained on: the same
        settings with other weights or another tokenizer put the head in the wrong space."""
        if fingerprint and self.fingerprint and fingerprint != self.fingerprint:
            raise FailedPrecondition(
                f"the encoder {self.spec.model!r} now has fingerprint {fingerprint[:12]}, "
                f"the model was trained on {self.fingerprint[:12]}",
                field="model",
            )

    @classmethod
    def from_manifest(cls, record: dict) -> EncoderRef:
        spec_keys = {f.name for f in dataclasses.fields(EncoderSpec)}
        spec = EncoderSpec(**{k: v for k, v in record.items() if k in spec_keys})
        return cls(spec, **{k: v for k, v in record.items() if k not in spec_keys})


def encoder_refs(cfg: EcdConfig) -> dict[str, EncoderRef]:
    """feature name → EncoderRef, for every text input feature, in config order."""
    refs = {}
    for f in cfg.input_features:
        if f.type != "text":
            continue
        enc = f.encoder
        spec = EncoderSpec(
            model=enc.model,
            pooling=enc.pooling,
            max_length=int(enc.max_sequence_length or 0),
            normalize=enc.normalize,
            layer=enc.layer,
            revision=enc.revision or "",
        )
        refs[f.name] = EncoderRef(spec, feature=f.name, adapted=enc.trainable)
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
        "base_model": first.spec.model if first else None,
        "encoders": {k: v.to_manifest() for k, v in encoders.items()},
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


@building_modules()
def load(directory: Path) -> Loaded:
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    config = parse_ecd(json.loads((directory / CONFIG_FILE).read_text()))
    metadata = json.loads((directory / METADATA_FILE).read_text())
    state = load_file(directory / HEAD_FILE)
    if manifest.get("format_version", 1) == 1:
        manifest, state = _upgrade_v1(manifest, config, state)
    encoders = {k: EncoderRef.from_manifest(v) for k, v in manifest["encoders"].items()}
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


# ------------------------------------------------------------------------- Ludwig's outputs
@dataclass
class FeatureOutput:
    """One output feature's decoded predictions for n rows."""

    feature: str
    predictions: list[str]
    probabilities: np.ndarray | None  # [n, classes] in class_names order, or None
    class_names: list[str]


def decode_outputs(model: PredictiveModel, logits: dict[str, torch.Tensor]) -> list[FeatureOutput]:
    """Each output's logits (on the CPU) → its predictions and probabilities, in config order."""
    return [
        FeatureOutput(name, *head.decode(head.scores(logits[name])))
        for name, head in model.outputs.items()
    ]


def ludwig_columns(outputs: list[FeatureOutput]) -> dict[str, list]:
    """Ludwig's prediction columns: `<f>_predictions`, and for classifiers `<f>_probability` (the
    winner's), `<f>_probabilities` (all, class order) and `<f>_probabilities_<class>`."""
    cols: dict[str, list] = {}
    for out in outputs:
        cols[f"{out.feature}_predictions"] = list(out.predictions)
        if out.probabilities is None:
            continue
        probs = np.asarray(out.probabilities, dtype=np.float32)
        cols[f"{out.feature}_probability"] = probs.max(axis=1).tolist()
        cols[f"{out.feature}_probabilities"] = probs.tolist()
        for j, name in enumerate(out.class_names):
            cols[f"{out.feature}_probabilities_{name}"] = probs[:, j].tolist()
    return cols
