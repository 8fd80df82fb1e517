"""Predictive (`model_type: ecd`) config: text input features through a pretrained encoder, a
task head per output feature. Ludwig's vocabulary; what is not built is refused by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tunewire.config.schema import ConfigError, check, join, parse
from tunewire.config.trainer import TrainerConfig

REDUCE_OUTPUTS = ("mean", "avg", "cls_pooled", "cls", "last", "max", "sum")
INPUT_TYPES = ("text",)
OUTPUT_TYPES = ("binary", "category", "number")


@dataclass
class EncoderConfig:
    type: Literal["auto_transformer", "bert", "llm"] = field(
        default="auto_transformer", metadata={"help": "Encoder family."})
    pretrained_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Local directory or Hub id of the encoder."})
    base_model: str | None = field(default=None, metadata={"help": "Encoder for type: llm."})
    trainable: bool = field(default=False, metadata={"help": "Fine-tune the encoder."})
    reduce_output: Literal["mean", "avg", "cls_pooled", "cls", "last", "max", "sum"] = field(
        default="mean", metadata={"help": "Pooling over the token sequence."})
    max_sequence_length: int | None = None
    layer: int = field(default=0, metadata={"help": "Hidden layer to pool (0/-1: last)."})
    normalize: bool = field(default=False, metadata={"help": "L2-normalise the embedding."})
    revision: str | None = None
    pretrained_kwargs: dict | None = None
    adapter: dict | None = None
    quantization: dict | None = None

    def __post_init__(self) -> None:
        if self.type == "llm":
            check(self.base_model is not None, "is required for encoder type llm", "base_model")
        else:
            check(self.pretrained_model_name_or_path is not None,
                  "is required for this encoder type", "pretrained_model_name_or_path")
        check(not self.trainable,
              "a trainable encoder (PEFT or full) is not built yet; use trainable: false",
              "trainable")
        check(self.adapter is None, "encoder adapters are not built yet", "adapter")
        check(self.quantization is None, "encoder quantization is not built yet", "quantization")
        check(self.pretrained_kwargs is None, "is not supported", "pretrained_kwargs")

    @property
    def model(self) -> str:
        return self.base_model if self.type == "llm" else self.pretrained_model_name_or_path  # type: ignore[return-value]

    @property
    def pooling(self) -> str:
        return {"avg": "mean", "cls_pooled": "cls"}.get(self.reduce_output, self.reduce_output)


@dataclass
class TextPreprocessing:
    max_sequence_length: int | None = field(default=256, metadata={"help": "Tokens kept per text."})
    cache_encoder_embeddings: bool = field(
        default=True, metadata={"help": "Compute frozen embeddings once, through the embedder cache."})
    lowercase: bool = False
    missing_value_strategy: Literal["fill_with_const", "drop_row"] = "fill_with_const"
    fill_value: str = ""
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        check(self.max_sequence_length is None or self.max_sequence_length >= 1,
              "must be >= 1", "max_sequence_length")


@dataclass
class InputFeature:
    name: str
    type: str
    column: str | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    preprocessing: TextPreprocessing = field(default_factory=TextPreprocessing)
    tied: str | None = None

    @staticmethod
    def precheck(data: dict) -> None:
        check("name" in data, "is required", "name")
        check(data.get("type") in INPUT_TYPES,
              f"input feature type {data.get('type')!r} is not supported (supported: "
              f"{', '.join(INPUT_TYPES)})", "type")

    def __post_init__(self) -> None:
        if self.column is None:
            self.column = self.name
        check(self.tied is None, "tied features are not supported", "tied")


@dataclass
class DecoderConfig:
    type: Literal["regressor", "classifier", "mlp_classifier", "projector"] | None = None
    num_fc_layers: int = field(default=1, metadata={"help": "Hidden layers before the output."})
    fc_output_size: int = field(default=256, metadata={"help": "Width of each hidden layer."})
    fc_dropout: float = field(default=0.0, metadata={"help": "Dropout after each hidden layer."})
    fc_activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    fc_norm: Literal["batch", "layer"] | None = None
    fc_use_bias: bool = True
    fc_layers: list[dict] | None = None

    def __post_init__(self) -> None:
        check(self.num_fc_layers >= 0, "must be >= 0", "num_fc_layers")
        check(self.fc_output_size >= 1, "must be >= 1", "fc_output_size")
        check(0.0 <= self.fc_dropout < 1.0, "must be in [0, 1)", "fc_dropout")
        if self.fc_layers is not None:
            for i, layer in enumerate(self.fc_layers):
                extra = set(layer) - {"output_size", "dropout", "activation"}
                check(not extra, f"unknown key {sorted(extra)[0]!r}", f"fc_layers[{i}]")


@dataclass
class LossConfig:
    type: Literal["binary_weighted_cross_entropy", "softmax_cross_entropy",
                  "mean_squared_error", "mean_absolute_error", "huber"] | None = None
    positive_class_weight: float | None = None
    class_weights: list[float] | dict | None = None
    weight: float = 1.0
    robust_lambda: float = 0.0
    confidence_penalty: float = 0.0
    delta: float = 1.0

    def __post_init__(self) -> None:
        check(self.robust_lambda == 0.0, "is not supported", "robust_lambda")
        check(self.confidence_penalty == 0.0, "is not supported", "confidence_penalty")


@dataclass
class OutputPreprocessing:
    missing_value_strategy: Literal["drop_row"] = "drop_row"
    fallback_true_label: str | None = None
    normalization: Literal["zscore", "minmax"] | None = None


@dataclass
class OutputFeature:
    name: str
    type: str
    column: str | None = None
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    preprocessing: OutputPreprocessing = field(default_factory=OutputPreprocessing)
    threshold: float = 0.5
    num_fc_layers: int | None = None
    fc_output_size: int | None = None
    fc_dropout: float | None = None
    top_k: int = 3

    @staticmethod
    def precheck(data: dict) -> None:
        check("name" in data, "is required", "name")
        check(data.get("type") in OUTPUT_TYPES,
              f"output feature type {data.get('type')!r} is not supported (supported: "
              f"{', '.join(OUTPUT_TYPES)})", "type")

    def __post_init__(self) -> None:
        if self.column is None:
            self.column = self.name
        check(0.0 < self.threshold < 1.0, "must be in (0, 1)", "threshold")
        # Ludwig's older spelling puts the fc stack on the feature itself.
        for key in ("num_fc_layers", "fc_output_size", "fc_dropout"):
            if getattr(self, key) is not None:
                setattr(self.decoder, key, getattr(self, key))
                setattr(self, key, None)
        if self.decoder.type is None:
            self.decoder.type = "classifier" if self.type == "category" else "regressor"
        default_loss = {"binary": "binary_weighted_cross_entropy",
                        "category": "softmax_cross_entropy", "number": "mean_squared_error"}
        if self.loss.type is None:
            self.loss.type = default_loss[self.type]
        allowed = {"binary": {"binary_weighted_cross_entropy"},
                   "category": {"softmax_cross_entropy"},
                   "number": {"mean_squared_error", "mean_absolute_error", "huber"}}[self.type]
        check(self.loss.type in allowed,
              f"loss {self.loss.type!r} does not fit a {self.type} output "
              f"(use {', '.join(sorted(allowed))})", "loss.type")
        if self.preprocessing.normalization is None and self.type == "number":
            self.preprocessing.normalization = "zscore"


@dataclass
class SplitConfig:
    type: Literal["random", "fixed", "stratify", "datetime", "hash"] = "random"
    probabilities: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    column: str | None = None

    def __post_init__(self) -> None:
        check(self.type in ("random", "fixed", "stratify", "hash"),
              f"split type {self.type!r} is not supported", "type")
        check(len(self.probabilities) == 3 and all(p >= 0 for p in self.probabilities)
              and abs(sum(self.probabilities) - 1.0) < 1e-6,
              "must be three non-negative numbers that sum to 1", "probabilities")
        check(self.probabilities[0] > 0, "the training fraction must be > 0", "probabilities")
        if self.type in ("fixed", "stratify", "hash"):
            check(bool(self.column), f"is required for split type {self.type!r}", "column")
        if self.type == "fixed" and self.column is None:
            self.column = "split"


@dataclass
class GlobalPreprocessing:
    split: SplitConfig = field(default_factory=SplitConfig)
    sample_ratio: float = 1.0
    sample_size: int | None = None
    oversample_minority: float | None = None
    undersample_majority: float | None = None
    global_max_sequence_length: int | None = None

    def __post_init__(self) -> None:
        check(0.0 < self.sample_ratio <= 1.0, "must be in (0, 1]", "sample_ratio")
        check(self.oversample_minority is None, "is not supported", "oversample_minority")
        check(self.undersample_majority is None, "is not supported", "undersample_majority")


@dataclass
class CombinerConfig:
    type: Literal["concat"] = "concat"
    fc_layers: list[dict] | None = None
    num_fc_layers: int = 0
    output_size: int = 256
    dropout: float = 0.0


@dataclass
class BackendConfig:
    type: Literal["local"] = "local"


@dataclass
class EcdConfig:
    input_features: list[InputFeature]
    output_features: list[OutputFeature]
    model_type: Literal["ecd"] = "ecd"
    combiner: CombinerConfig = field(default_factory=CombinerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    preprocessing: GlobalPreprocessing = field(default_factory=GlobalPreprocessing)
    defaults: dict | None = None
    hyperopt: dict | None = None
    backend: BackendConfig | None = None
    ludwig_version: str | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        check(len(self.input_features) >= 1, "at least one input feature is required",
              "input_features")
        check(len(self.output_features) >= 1, "at least one output feature is required",
              "output_features")
        check(len(self.input_features) == 1,
              "several input features (combiner) are not built yet; use one text feature",
              "input_features")
        check(len(self.output_features) == 1,
              "several output features are not built yet; use one", "output_features")
        check(self.hyperopt is None, "hyperopt is not supported", "hyperopt")
        check(self.defaults is None, "is not supported; set options per feature", "defaults")
        names = [f.name for f in [*self.input_features, *self.output_features]]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError_at("input_features", f"feature name {sorted(dup)[0]!r} is used twice")
        if self.trainer.type == "finetune":
            raise ValueError_at("trainer.type", "`finetune` belongs to model_type: llm")
        for i, feat in enumerate(self.input_features):
            if feat.encoder.max_sequence_length is None:
                feat.encoder.max_sequence_length = feat.preprocessing.max_sequence_length
            if feat.encoder.trainable and feat.preprocessing.cache_encoder_embeddings:
                raise ValueError_at(f"input_features[{i}].preprocessing.cache_encoder_embeddings",
                                    "cannot cache embeddings of a trainable encoder")
        out = self.output_features[0]
        if self.trainer.validation_field is None:
            self.trainer.validation_field = out.name
        if self.trainer.validation_metric is None:
            self.trainer.validation_metric = "loss"
        if self.trainer.batch_size == "auto":
            self.trainer.batch_size = 128
        if self.trainer.eval_batch_size in (None, "auto"):
            self.trainer.eval_batch_size = 1024
        if self.trainer.learning_rate == "auto":
            self.trainer.learning_rate = 0.001
        check(self.trainer.validation_field in [o.name for o in self.output_features],
              "must name an output feature", "trainer.validation_field")


def ValueError_at(field_path: str, message: str) -> ValueError:
    exc = ValueError(message)
    exc.field = field_path  # type: ignore[attr-defined]
    return exc


def parse_ecd(data: dict, path: str = "") -> EcdConfig:
    for key in ("input_features", "output_features"):
        if key not in data:
            raise ConfigError("is required", field=join(path, key))
    return parse(EcdConfig, data, path)
