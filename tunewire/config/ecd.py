"""Predictive (`model_type: ecd`) config: text features through a pretrained encoder (frozen and
cached, or adapted with LoRA), number/binary/category features beside them, a concat combiner and a
task head per output feature. Ludwig's vocabulary; what is not built is refused by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tunewire.config.backend import BackendConfig, DistributedTrainer
from tunewire.config.ludwig_saved import normalise_ecd
from tunewire.config.schema import (
    MAX_FC_LAYERS,
    MAX_LAYER_WIDTH,
    MAX_LORA_RANK,
    ConfigError,
    check,
    check_range,
    join,
    parse,
)
from tunewire.config.trainer import TrainerConfig

INPUT_TYPES = ("text", "number", "binary", "category")
OUTPUT_TYPES = ("binary", "category", "number", "set", "vector")
# Output types whose head emits logits of a distribution that temperature scaling can calibrate.
CALIBRATABLE = ("binary", "category")


@dataclass
class LoraConfig:
    """The encoder adapter (PEFT LoRA), in Ludwig's spelling."""

    type: Literal["lora"] = field(default="lora", metadata={"help": "Only LoRA is built."})
    r: int = field(default=8, metadata={"help": "Rank of the update matrices."})
    alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (alpha / r)."})
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt; null: PEFT's default per model."}
    )
    bias: Literal["none", "all", "lora_only"] = "none"

    def __post_init__(self) -> None:
        check_range(self.r, 1, MAX_LORA_RANK, "r")
        check(self.alpha >= 1, "must be >= 1", "alpha")
        check(0.0 <= self.dropout < 1.0, "must be in [0, 1)", "dropout")


# Ludwig 0.17's reduce_output defaults where ours (mean over the tokens) differ: a sum of token
# vectors grows with the text's length, and a frozen encoder's mean is what sentence embedders use.
LUDWIG_POOLING = {"auto_transformer": "sum", "bert": "cls_pooled"}


@dataclass
class EncoderConfig:
    type: Literal["auto_transformer", "bert", "llm"] = field(
        default="auto_transformer", metadata={"help": "Encoder family."}
    )
    pretrained_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Local directory or Hub id of the encoder."}
    )
    base_model: str | None = field(default=None, metadata={"help": "Encoder for type: llm."})
    trainable: bool = field(default=False, metadata={"help": "Adapt the encoder (needs adapter)."})
    reduce_output: Literal["mean", "avg", "cls_pooled", "cls", "last", "max", "sum"] | None = field(
        default=None,
        metadata={"help": "Pooling over the tokens; default: last for llm, else mean."},
    )
    max_sequence_length: int | None = None
    layer: int = field(default=0, metadata={"help": "Hidden layer to pool (0/-1: last)."})
    normalize: bool = field(default=False, metadata={"help": "L2-normalise the embedding."})
    revision: str | None = None
    pretrained_kwargs: dict | None = None
    adapter: LoraConfig | None = field(
        default=None, metadata={"help": "PEFT adapter trained with the head (trainable: true)."}
    )
    quantization: dict | None = None

    def __post_init__(self) -> None:
        if self.type == "llm":
            check(self.base_model is not None, "is required for encoder type llm", "base_model")
        else:
            check(
                self.pretrained_model_name_or_path is not None,
                "is required for this encoder type",
                "pretrained_model_name_or_path",
            )
        # Not a config key: where the default pooling is not Ludwig's (a recorded difference).
        self.pooling_differs: str | None = None
        if self.reduce_output is None:
            # A causal LM has read the whole text only at its last token.
            self.reduce_output = "last" if self.type == "llm" else "mean"
            self.pooling_differs = LUDWIG_POOLING.get(self.type)
        check(
            not self.trainable or self.adapter is not None,
            "full fine-tuning of the encoder is not built; add adapter: {type: lora} or use "
            "trainable: false",
            "trainable",
        )
        check(
            self.adapter is None or self.trainable,
            "an adapter is trained with the encoder: set trainable: true",
            "adapter",
        )
        check(
            self.quantization is None,
            "encoder quantization is not built (it needs bitsandbytes on a GPU)",
            "quantization",
        )
        check(self.pretrained_kwargs is None, "is not supported", "pretrained_kwargs")

    @property
    def model_key(self) -> str:
        """The key that names the model for this encoder type (what errors point at)."""
        return "base_model" if self.type == "llm" else "pretrained_model_name_or_path"

    @property
    def model(self) -> str:
        return self.base_model if self.type == "llm" else self.pretrained_model_name_or_path  # type: ignore[return-value]

    @property
    def pooling(self) -> str:
        mode = str(self.reduce_output)
        return {"avg": "mean", "cls_pooled": "cls"}.get(mode, mode)


@dataclass
class TextPreprocessing:
    max_sequence_length: int | None = field(default=256, metadata={"help": "Tokens kept per text."})
    cache_encoder_embeddings: bool | None = field(
        default=None,
        metadata={
            "help": "Compute frozen embeddings once, through the embedder "
            "cache; default: true unless the encoder is trainable."
        },
    )
    lowercase: bool = False
    missing_value_strategy: Literal["fill_with_const", "drop_row"] = "fill_with_const"
    fill_value: str = field(default="<UNK>", metadata={"help": "A missing text (Ludwig's)."})
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "Only the encoder's own (Ludwig's hf_tokenizer) is built."},
    )

    def __post_init__(self) -> None:
        check(
            self.tokenizer in (None, "hf_tokenizer"),
            f"tokenizer {self.tokenizer!r} is not built: text is tokenised by the encoder's own "
            "tokenizer (Ludwig's hf_tokenizer, what it sets for pretrained encoders)",
            "tokenizer",
        )
        check(
            self.max_sequence_length is None or self.max_sequence_length >= 1,
            "must be >= 1",
            "max_sequence_length",
        )


@dataclass
class NumberPreprocessing:
    normalization: Literal["zscore", "minmax"] | None = field(
        default="zscore", metadata={"help": "Fitted on the training split, kept in the artifact."}
    )
    missing_value_strategy: Literal["fill_with_const", "fill_with_mean"] = field(
        default="fill_with_const",
        metadata={"help": "Ludwig's default: a missing number reads as fill_value."},
    )
    fill_value: float = 0.0


@dataclass
class BinaryPreprocessing:
    missing_value_strategy: Literal["fill_with_false"] = field(
        default="fill_with_false", metadata={"help": "A missing value reads as the false class."}
    )
    fallback_true_label: str | None = None


@dataclass
class CategoryPreprocessing:
    missing_value_strategy: Literal["fill_with_unk"] = field(
        default="fill_with_unk", metadata={"help": "Missing and unseen values read as <UNK>."}
    )
    most_common: int = field(default=10000, metadata={"help": "Vocabulary size; rarer: <UNK>."})

    def __post_init__(self) -> None:
        check(self.most_common >= 1, "must be >= 1", "most_common")


@dataclass
class PassthroughEncoder:
    """number and binary inputs enter the combiner as they are (normalised)."""

    type: Literal["passthrough"] = "passthrough"


@dataclass
class CategoryEncoder:
    type: Literal["onehot", "sparse", "dense"] = field(
        default="dense", metadata={"help": "onehot/sparse: one-hot; dense: a learned embedding."}
    )
    embedding_size: int = field(default=50, metadata={"help": "Width of the dense embedding."})
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check(self.embedding_size >= 1, "must be >= 1", "embedding_size")
        check(0.0 <= self.dropout < 1.0, "must be in [0, 1)", "dropout")


# type -> (encoder section, preprocessing section)
_INPUT_SECTIONS: dict[str, tuple[type, type]] = {
    "text": (EncoderConfig, TextPreprocessing),
    "number": (PassthroughEncoder, NumberPreprocessing),
    "binary": (PassthroughEncoder, BinaryPreprocessing),
    "category": (CategoryEncoder, CategoryPreprocessing),
}


def _section(cls: type, data, key: str):
    """Parse a per-type section, reporting errors at `key.<field>` so the caller's path joins."""
    try:
        return parse(cls, data, key)
    except ConfigError as exc:
        raise ValueError_at(exc.field or key, exc.message) from None


@dataclass
class InputFeature:
    name: str
    type: str
    column: str | None = None
    # Typed by `type` (see _INPUT_SECTIONS): parsed in __post_init__, written back in full.
    encoder: Any = field(
        default=None,
        metadata={
            "help": "The feature's encoder section.",
            "one_of": lambda value, parent: _INPUT_SECTIONS[parent["type"]][0],
        },
    )
    preprocessing: Any = field(
        default=None,
        metadata={
            "help": "The feature's preprocessing.",
            "one_of": lambda value, parent: _INPUT_SECTIONS[parent["type"]][1],
        },
    )
    tied: str | None = None

    @staticmethod
    def precheck(data: dict) -> None:
        check("name" in data, "is required", "name")
        check(
            data.get("type") in INPUT_TYPES,
            f"input feature type {data.get('type')!r} is not supported (supported: "
            f"{', '.join(INPUT_TYPES)})",
            "type",
        )

    def __post_init__(self) -> None:
        if self.column is None:
            self.column = self.name
        check(self.tied is None, "tied features are not supported", "tied")
        enc_cls, pre_cls = _INPUT_SECTIONS[self.type]
        if not isinstance(self.encoder, enc_cls):
            self.encoder = _section(enc_cls, self.encoder, "encoder")
        if not isinstance(self.preprocessing, pre_cls):
            self.preprocessing = _section(pre_cls, self.preprocessing, "preprocessing")
        if self.type == "text":
            enc, pre = self.encoder, self.preprocessing
            if pre.cache_encoder_embeddings is None:
                pre.cache_encoder_embeddings = not enc.trainable
            check(
                not (enc.trainable and pre.cache_encoder_embeddings),
                "cannot cache embeddings of a trainable encoder (its output changes as it "
                "trains); set it false or make the encoder frozen",
                "preprocessing.cache_encoder_embeddings",
            )
            if enc.max_sequence_length is None:
                enc.max_sequence_length = pre.max_sequence_length


def _check_fc_layers(layers: list[dict] | None) -> None:
    for i, layer in enumerate(layers or []):
        extra = set(layer) - {"output_size", "dropout", "activation"}
        # The message names the first unknown key, so it is built only when there is one.
        check(not extra, f"unknown key {sorted(extra)[0]!r}" if extra else "", f"fc_layers[{i}]")
        size = layer.get("output_size", 1)
        check(
            isinstance(size, int) and not isinstance(size, bool),
            "must be an integer",
            f"fc_layers[{i}].output_size",
        )
        check_range(size, 1, MAX_LAYER_WIDTH, f"fc_layers[{i}].output_size")
    check(len(layers or []) <= MAX_FC_LAYERS, f"at most {MAX_FC_LAYERS} layers", "fc_layers")


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
    use_bias: bool = field(
        default=True,
        metadata={
            "help": "Bias of the output projection; false lets a one-layer "
            "head export as a stock *ForSequenceClassification."
        },
    )

    def __post_init__(self) -> None:
        check_range(self.num_fc_layers, 0, MAX_FC_LAYERS, "num_fc_layers")
        check_range(self.fc_output_size, 1, MAX_LAYER_WIDTH, "fc_output_size")
        check(0.0 <= self.fc_dropout < 1.0, "must be in [0, 1)", "fc_dropout")
        _check_fc_layers(self.fc_layers)


@dataclass
class LossConfig:
    type: (
        Literal[
            "binary_weighted_cross_entropy",
            "softmax_cross_entropy",
            "sigmoid_cross_entropy",
            "focal",
            "mean_squared_error",
            "mean_absolute_error",
            "huber",
        ]
        | None
    ) = None
    positive_class_weight: float | None = None
    class_weights: list[float] | dict | None = field(
        default=None,
        metadata={
            "help": "Per-class weights (category, set): a list in vocabulary "
            "order or {class: weight}; unnamed classes weigh 1."
        },
    )
    weight: float = field(default=1.0, metadata={"help": "This output's share of the summed loss."})
    gamma: float = field(default=2.0, metadata={"help": "Focusing exponent of the focal loss."})
    robust_lambda: float = 0.0
    confidence_penalty: float = 0.0
    delta: float = 1.0

    def __post_init__(self) -> None:
        check(self.robust_lambda == 0.0, "is not supported", "robust_lambda")
        check(self.confidence_penalty == 0.0, "is not supported", "confidence_penalty")
        check(self.weight >= 0.0, "must be >= 0", "weight")
        check(self.gamma >= 0.0, "must be >= 0", "gamma")


# The default of an output's normalization, told apart from an explicit null (Ludwig's "the target
# as is", honoured): resolved in __post_init__, never written to a resolved config.
_UNSET = "<unset>"


@dataclass
class OutputPreprocessing:
    missing_value_strategy: Literal["drop_row"] = "drop_row"
    fallback_true_label: str | None = None
    normalization: Literal["zscore", "minmax"] | None = field(
        default=_UNSET,  # type: ignore[assignment]
        metadata={"help": "Number outputs: unset is zscore; null leaves the target as is."},
    )
    tokenizer: Literal["space", "comma"] = field(
        default="space", metadata={"help": "How set and vector labels are split."}
    )

    def __post_init__(self) -> None:
        # Not a config key: whether normalization was left out (OutputFeature picks its default).
        self.normalization_unset = self.normalization == _UNSET
        if self.normalization_unset:
            self.normalization = None


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
    calibration: bool = field(
        default=False, metadata={"help": "Temperature scaling fitted on the validation split."}
    )
    vector_size: int | None = field(default=None, metadata={"help": "vector: length (inferred)."})

    @staticmethod
    def precheck(data: dict) -> None:
        check("name" in data, "is required", "name")
        check(
            data.get("type") in OUTPUT_TYPES,
            f"output feature type {data.get('type')!r} is not supported (supported: "
            f"{', '.join(OUTPUT_TYPES)})",
            "type",
        )

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
        default_loss = {
            "binary": "binary_weighted_cross_entropy",
            "category": "softmax_cross_entropy",
            "number": "mean_squared_error",
            "set": "sigmoid_cross_entropy",
            "vector": "mean_squared_error",
        }
        if self.loss.type is None:
            self.loss.type = default_loss[self.type]
        regression = {"mean_squared_error", "mean_absolute_error", "huber"}
        allowed = {
            "binary": {"binary_weighted_cross_entropy", "focal"},
            "category": {"softmax_cross_entropy", "focal"},
            "number": regression,
            "set": {"sigmoid_cross_entropy"},
            "vector": regression,
        }[self.type]
        check(
            self.loss.type in allowed,
            f"loss {self.loss.type!r} does not fit a {self.type} output "
            f"(use {', '.join(sorted(allowed))})",
            "loss.type",
        )
        check(
            not self.calibration or self.type in CALIBRATABLE,
            f"calibration (temperature scaling) is for {' and '.join(CALIBRATABLE)} outputs",
            "calibration",
        )
        # Not a config key: Ludwig leaves a number target as is; here an unset normalization is
        # zscore (recorded), and an explicit null is Ludwig's.
        self.normalization_differs = False
        if self.type == "number" and getattr(self.preprocessing, "normalization_unset", False):
            self.preprocessing.normalization = "zscore"
            self.normalization_differs = True


@dataclass
class SplitConfig:
    type: Literal["random", "fixed", "stratify", "datetime", "hash"] = "random"
    probabilities: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    column: str | None = None

    def __post_init__(self) -> None:
        check(
            self.type in ("random", "fixed", "stratify", "hash"),
            f"split type {self.type!r} is not supported",
            "type",
        )
        check(
            len(self.probabilities) == 3
            and all(p >= 0 for p in self.probabilities)
            and abs(sum(self.probabilities) - 1.0) < 1e-6,
            "must be three non-negative numbers that sum to 1",
            "probabilities",
        )
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
    """Ludwig's concat combiner: every input feature's encoding side by side, then an fc stack."""

    type: Literal["concat"] = field(default="concat", metadata={"help": "Only concat is built."})
    fc_layers: list[dict] | None = field(
        default=None, metadata={"help": "[{output_size, dropout, activation}] per hidden layer."}
    )
    num_fc_layers: int = field(default=0, metadata={"help": "Hidden layers after the concat."})
    output_size: int = field(default=256, metadata={"help": "Width of each hidden layer."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout after each hidden layer."})
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"

    def __post_init__(self) -> None:
        check_range(self.num_fc_layers, 0, MAX_FC_LAYERS, "num_fc_layers")
        check_range(self.output_size, 1, MAX_LAYER_WIDTH, "output_size")
        check(0.0 <= self.dropout < 1.0, "must be in [0, 1)", "dropout")
        _check_fc_layers(self.fc_layers)


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
        # Not a config key: deliberate differences found at parse (see differences_from_ludwig).
        self.differences: list[str] = []
        check(
            len(self.input_features) >= 1,
            "at least one input feature is required",
            "input_features",
        )
        check(
            len(self.output_features) >= 1,
            "at least one output feature is required",
            "output_features",
        )
        check(self.hyperopt is None, "hyperopt is not supported", "hyperopt")
        # `defaults:` is applied to the features before parsing (ludwig_saved), then dropped.
        check(self.defaults is None, "is applied before parsing; pass the raw config", "defaults")
        names = [f.name for f in [*self.input_features, *self.output_features]]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError_at("input_features", f"feature name {sorted(dup)[0]!r} is used twice")
        if self.trainer.type == "finetune":
            raise ValueError_at("trainer.type", "`finetune` belongs to model_type: llm")
        if self.backend is not None and self.backend.trainer != DistributedTrainer():
            raise ValueError_at(
                "backend.trainer",
                "a predictive model trains in the trainer's own process; torchrun workers "
                "(backend.trainer) are for model_type: llm",
            )
        if self.trainer.use_liger_kernel:
            raise ValueError_at(
                "trainer.use_liger_kernel", "Liger's kernels are for model_type: llm only"
            )
        trainable = [
            i for i, f in enumerate(self.input_features) if f.type == "text" and f.encoder.trainable
        ]
        if len(trainable) > 1:
            raise ValueError_at(
                f"input_features[{trainable[1]}].encoder.trainable",
                "one adapted (trainable) text encoder per model is built; keep the others frozen",
            )
        _check_trainer_keys(self.trainer)
        if self.preprocessing.global_max_sequence_length is not None:
            # Ludwig caps every text feature's length at the global one.
            cap = self.preprocessing.global_max_sequence_length
            for f in self.input_features:
                if f.type == "text":
                    own = f.preprocessing.max_sequence_length
                    f.preprocessing.max_sequence_length = cap if own is None else min(own, cap)
        if self.trainer.validation_field is None:
            self.trainer.validation_field = self.output_features[0].name
        if self.trainer.validation_metric is None:
            self.trainer.validation_metric = "loss"
        if self.trainer.eval_batch_size in (None, "auto"):
            self.trainer.eval_batch_size = 1024
        if self.trainer.learning_rate == "auto":
            self.trainer.learning_rate = 0.001
        check(
            self.trainer.validation_field in [o.name for o in self.output_features] + ["combined"],
            "must name an output feature or be 'combined'",
            "trainer.validation_field",
        )
        check(
            self.trainer.validation_field != "combined" or self.trainer.validation_metric == "loss",
            "only the loss is computed for 'combined'",
            "trainer.validation_metric",
        )


# ecd trainer keys that are not built, with why; a value other than Ludwig's default is refused.
_UNBUILT_TRAINER_KEYS = {
    "use_mixed_precision": (False, "the head trains in float32 (frozen vectors come as stored)"),
    "enable_gradient_checkpointing": (False, "a head is a few layers; nothing to recompute"),
    "eval_steps": (None, "an ecd job evaluates once an epoch"),
    "steps_per_checkpoint": (0, "an ecd job keeps its best epoch in memory, no checkpoints"),
    "checkpoints_per_epoch": (0, "an ecd job keeps its best epoch in memory, no checkpoints"),
    "skip_all_evaluation": (False, "early stopping and the best epoch need the evaluation"),
    "compile": (False, "on a GPU the head's step is captured as a CUDA graph already"),
    "compile_mode": ("default", "on a GPU the head's step is captured as a CUDA graph already"),
    "precision": ("auto", "the head trains in float32; fp8 is for model_type: llm"),
    "bucketing_field": (None, "batches are rows of fixed vectors; there is nothing to bucket"),
    "layers_to_freeze_regex": (None, "a head trains whole; freeze an encoder by trainable: false"),
}


def _check_trainer_keys(t: TrainerConfig) -> None:
    """Every ecd trainer key does what it does in Ludwig or is refused here, naming it."""
    for key, (default, why) in _UNBUILT_TRAINER_KEYS.items():
        if getattr(t, key) != default:
            raise ValueError_at(f"trainer.{key}", f"is not built for ecd ({why})")
    if t.optimizer.type not in ("adam", "adamw", "sgd"):
        raise ValueError_at(
            "trainer.optimizer.type",
            f"{t.optimizer.type} is not built for ecd: it is a bitsandbytes optimizer for "
            "quantized llm bases on a GPU, and a head is small and unquantized (use adam, "
            "adamw or sgd)",
        )
    _resolve_accumulation(t)


AUTO_BATCH_SIZE = 128


def _resolve_accumulation(t: TrainerConfig) -> None:
    """Ludwig's batch_size / gradient_accumulation_steps / effective_batch_size (= batch_size ×
    accumulation; one process trains a head): the same checks, the same 'auto' rules, with an
    auto batch_size of 128 (capped by max_batch_size and the effective size) where Ludwig tunes
    one for throughput. Every value is written back resolved."""
    eff, accum = t.effective_batch_size, t.gradient_accumulation_steps
    if eff != "auto":
        if eff > t.max_batch_size:
            raise ValueError_at(
                "trainer.max_batch_size",
                f"must be >= effective_batch_size ({eff}) (as in Ludwig)",
            )
        if t.batch_size != "auto" and (eff < t.batch_size or eff % t.batch_size):
            raise ValueError_at(
                "trainer.effective_batch_size",
                f"must be a multiple of batch_size ({t.batch_size})",
            )
        if accum != "auto" and eff % accum:
            raise ValueError_at(
                "trainer.effective_batch_size",
                f"must be divisible by gradient_accumulation_steps ({accum})",
            )
    if t.batch_size == "auto":
        cap = min(AUTO_BATCH_SIZE, t.max_batch_size)
        if eff == "auto":
            t.batch_size = cap
        elif accum != "auto":
            t.batch_size = max(eff // accum, 1)
        else:  # the largest batch up to the cap that divides the effective size
            t.batch_size = max(d for d in range(1, min(cap, eff) + 1) if eff % d == 0)
    if accum == "auto":
        t.gradient_accumulation_steps = 1 if eff == "auto" else max(eff // t.batch_size, 1)
    effective = t.batch_size * t.gradient_accumulation_steps
    if eff not in ("auto", effective):
        raise ValueError_at(
            "trainer.effective_batch_size",
            f"is {eff} but batch_size × gradient_accumulation_steps is {effective}",
        )
    t.effective_batch_size = effective


def ValueError_at(field_path: str, message: str) -> ValueError:
    exc = ValueError(message)
    exc.field = field_path  # type: ignore[attr-defined]
    return exc


def parse_ecd(data: dict, path: str = "") -> EcdConfig:
    for key in ("input_features", "output_features"):
        if key not in data:
            raise ConfigError("is required", field=join(path, key))
    data = normalise_ecd(data, path)
    trainer = data.get("trainer")
    if isinstance(trainer, dict) and trainer.get("effective_batch_size", "auto") != "auto":
        # Ludwig's accumulation default is auto: an effective size alone sets it.
        data["trainer"] = {"gradient_accumulation_steps": "auto", **trainer}
    cfg = parse(EcdConfig, data, path)
    if "combiner" not in data and len(cfg.input_features) >= LUDWIG_FT_TRANSFORMER_INPUTS:
        cfg.differences.append(
            f"combiner: concat (Ludwig 0.17 builds ft_transformer for "
            f"{LUDWIG_FT_TRANSFORMER_INPUTS} or more input features and no combiner; only concat "
            "is built here)"
        )
    return cfg


# Ludwig 0.17 defaults to the ft_transformer combiner from this many inputs (ModelConfig.from_dict).
LUDWIG_FT_TRANSFORMER_INPUTS = 3


def differences_from_ludwig(cfg: EcdConfig) -> list[str]:
    """Where this job, as configured, deliberately does something other than Ludwig 0.17 would:
    recorded in the artifact's tunewire.json, listed in docs/ludwig.md, said in the first event."""
    out = list(getattr(cfg, "differences", []))
    for i, f in enumerate(cfg.input_features):
        ludwig = getattr(f.encoder, "pooling_differs", None) if f.type == "text" else None
        if ludwig is not None:
            out.append(
                f"input_features[{i}].encoder.reduce_output: mean over the tokens (Ludwig's "
                f"{f.encoder.type} default is {ludwig})"
            )
    for i, f in enumerate(cfg.output_features):
        if getattr(f, "normalization_differs", False):
            out.append(
                f"output_features[{i}].preprocessing.normalization: zscore (Ludwig's default for "
                "a number output is null, the target as is; unset is zscore here, an explicit "
                "null is honoured): the head learns the normalised target and its predictions are "
                "mapped back"
            )
    return out
