"""Generative (`model_type: llm`) config in Ludwig's vocabulary.

A Ludwig user's llm fine-tuning config runs here as it is: `base_model`, one text input and one text
output feature, `prompt`, `adapter` (lora/adalora/ia3), `quantization`, `trainer` (type finetune),
`generation` and `preprocessing`. What Ludwig has and we do not build is refused by name; unknown
keys are errors with their path; every default is written back (see `to_dict`).

`backend` is Ludwig's key for where training runs. Ludwig's `ray` backend is not built: training
runs as `torchrun` workers, so `backend.type` is `local` and `backend.trainer` says how many:

    backend:
      type: local
      trainer:
        strategy: ddp        # ddp (replicate) or fsdp (FSDP2 fully_shard: shard params/grads/state)
        num_workers: 1       # processes (one GPU each) per node
        nnodes: 1            # nodes; > 1 means the job is launched by a multi-node runner
                             # (k8s Indexed Job / PyTorchJob) with c10d rendezvous
        use_gpu: true        # false trains on CPU (gloo); tests use it
        reshard_after_forward: true  # fsdp only; false keeps gathered weights until backward
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any, Literal

from tunewire.config.backend import BackendConfig
from tunewire.config.ecd import SplitConfig
from tunewire.config.ludwig_saved import normalise_llm
from tunewire.config.schema import (
    MAX_LORA_RANK,
    ConfigError,
    check,
    check_range,
    from_dict,
    join,
    parse,
    to_dict,
)
from tunewire.config.trainer import TrainerConfig

# Ludwig's default prompt when only `prompt.task` is given.
DEFAULT_TASK_TEMPLATE = (
    "SAMPLE INPUT: {__sample__}\n\nUSER: Complete the following task: {__task__}\n\nASSISTANT:\n"
)
# Ludwig's default prompt when `prompt.task` is given with `prompt.retrieval` (few-shot): the
# retrieved examples go where {__context__} stands. Ludwig's text, kept as is: it is what the model
# reads.
DEFAULT_FEW_SHOT_TEMPLATE = (
    "Below is relevant context:\n\nCONTEXT: {__context__}\n\n"
    "CONTEXT is comprised of labeled samples whose embeddings were similar to that of the sample "
    "input. The labels in\nthese samples could aid you in your final prediction. Given this and "
    "no prior knowledge, follow the instructions\nbelow.\n\n"
    "SAMPLE INPUT: {__sample__}\n\nUSER: Complete the following task: {__task__}\n\nASSISTANT:\n"
)

# Ludwig's generation defaults where the user says nothing: low-temperature sampling.
# `max_new_tokens` null means Ludwig's rule (`resolve_max_new_tokens`).
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": None,
    "do_sample": True,
    "temperature": 0.1,
    "top_k": 50,
    "top_p": 1.0,
    "num_beams": 1,
}
LUDWIG_MAX_NEW_TOKENS = 32

# Read only when sampling; transformers refuses to save them beside do_sample: false.
SAMPLING_ONLY = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
)


def generation_for_transformers(generation: dict) -> dict:
    """The generation settings as transformers takes them: a null is left out (unset: the model's
    or transformers' own, as a Ludwig-saved config's null token ids mean), and with
    `do_sample: false`, the sampling knobs (which Ludwig's defaults set and transformers ignores)
    are left out."""
    out = {k: v for k, v in generation.items() if v is not None}
    if not out.get("do_sample", False):
        for key in SAMPLING_ONLY:
            out.pop(key, None)
    return out


def resolve_max_new_tokens(cfg: LlmConfig, context_len: int | None) -> int | None:
    """Ludwig's rule when `generation.max_new_tokens` is unset: the output feature's
    max_sequence_length, else the global one (at least 32 either way), else half the base model's
    context window (None while that is not known)."""
    explicit = cfg.output.preprocessing.max_sequence_length
    if explicit is None:
        explicit = cfg.preprocessing.global_max_sequence_length
    if explicit is not None:
        return max(LUDWIG_MAX_NEW_TOKENS, explicit)
    return None if context_len is None else context_len // 2


@dataclass
class TextFeaturePreprocessing:
    max_sequence_length: int | None = field(
        default=None, metadata={"help": "Tokens kept for this feature (null: global limit)."}
    )
    lowercase: bool = False
    missing_value_strategy: Literal["fill_with_const", "drop_row"] = "drop_row"
    fill_value: str = ""
    fallback_label: str | None = field(
        default=None, metadata={"help": "Category outputs: the label when none matches."}
    )

    def __post_init__(self) -> None:
        check(
            self.max_sequence_length is None or self.max_sequence_length >= 1,
            "must be >= 1",
            "max_sequence_length",
        )


@dataclass
class TextFeature:
    name: str
    type: str
    column: str | None = None
    preprocessing: TextFeaturePreprocessing = field(default_factory=TextFeaturePreprocessing)

    @staticmethod
    def precheck(data: dict) -> None:
        check("name" in data, "is required", "name")
        check(
            data.get("type") == "text",
            f"feature type {data.get('type')!r} is not supported for model_type llm (use text)",
            "type",
        )

    def __post_init__(self) -> None:
        if self.column is None:
            self.column = self.name


@dataclass
class ExtractorDecoder:
    """Ludwig's llm decoders: `text_extractor` (the generated text) or `category_extractor`
    (the generated text, lower-cased, mapped to the first label whose `match` rule it meets:
    `{label: {type: contains | regex, value: ...}}`; none met gives `fallback_label`)."""

    type: Literal["text_extractor", "category_extractor"] = "text_extractor"
    match: dict | None = None
    fallback_label: str | None = field(
        default=None, metadata={"help": "Label when no rule matches; null: Ludwig's <UNK>."}
    )
    constrain_to_vocabulary: bool = False

    @staticmethod
    def precheck(data: dict) -> None:
        kind = data.get("type", "text_extractor")
        check(
            kind in ("text_extractor", "category_extractor"),
            f"decoder type {kind!r} is not built (text_extractor, category_extractor)",
            "type",
        )

    def __post_init__(self) -> None:
        check(
            not self.constrain_to_vocabulary,
            "constrained decoding to the labels is not built",
            "constrain_to_vocabulary",
        )
        if self.type == "category_extractor":
            check(bool(self.match), "is required: {label: {type, value}} per class", "match")
            for label, rule in (self.match or {}).items():
                where = f"match.{label}"
                check(isinstance(rule, dict), "must be {type: contains | regex, value}", where)
                check(
                    rule.get("type") in ("contains", "regex"),
                    f"match type {rule.get('type')!r} is not one of 'contains', 'regex'",
                    f"{where}.type",
                )
                check(isinstance(rule.get("value"), str), "must be a string", f"{where}.value")
                if rule["type"] == "regex":
                    try:
                        re.compile(rule["value"])
                    except re.error as exc:
                        check(False, f"is not a valid regular expression: {exc}", f"{where}.value")
            if self.fallback_label is None:
                self.fallback_label = "<UNK>"


@dataclass
class LlmOutputFeature(TextFeature):
    """The llm's output: text, or a category extracted from the generated text."""

    decoder: ExtractorDecoder = field(default_factory=ExtractorDecoder)

    @staticmethod
    def precheck(data: dict) -> None:
        check("name" in data, "is required", "name")
        check(
            data.get("type") in ("text", "category"),
            f"output feature type {data.get('type')!r} is not supported for model_type llm "
            "(use text, or category with decoder: {type: category_extractor, match: ...})",
            "type",
        )
        if data.get("type") == "category":
            decoder = data.get("decoder") or {}
            check(
                decoder.get("type") == "category_extractor",
                "a category output of an llm needs decoder.type: category_extractor",
                "decoder.type",
            )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoder.type == "category_extractor" and self.preprocessing.fallback_label:
            # Ludwig hands the feature's preprocessing.fallback_label to its decoder.
            if self.decoder.fallback_label in (None, "<UNK>"):
                self.decoder.fallback_label = self.preprocessing.fallback_label
        check(
            self.type != "text" or self.decoder.type == "text_extractor",
            "a text output takes decoder.type: text_extractor",
            "decoder.type",
        )

    def extract_label(self, generated: str) -> str:
        """The class a generated text means (category outputs)."""
        text = generated.lower()
        for label, rule in (self.decoder.match or {}).items():
            if rule["type"] == "contains" and rule["value"] in text:
                return label
            if rule["type"] == "regex" and re.search(rule["value"], text):
                return label
        return str(self.decoder.fallback_label)


TEMPLATE_KEYWORDS = ("__sample__", "__task__", "__context__")


def template_fields(template: str) -> list[str]:
    """The placeholder names of a prompt template, in order."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


@dataclass
class RetrievalConfig:
    """Ludwig's `prompt.retrieval`: each prompt gets `k` examples (input and output) from the
    training split in its {__context__}: `random` ones, or the `semantic`ally nearest by the
    encoder `model_name` (run by the embedder, whose cache keeps the training rows' vectors).
    Type null: no examples (zero-shot prompts)."""

    type: Literal["random", "semantic"] | None = None
    index_name: str | None = field(
        default=None, metadata={"help": "A Ludwig cache index name; only null is accepted."}
    )
    model_name: str | None = field(
        default=None, metadata={"help": "semantic: the encoder (a path, NAME or Hub id)."}
    )
    k: int = field(default=0, metadata={"help": "Examples per prompt (a type with 0: 1)."})

    def __post_init__(self) -> None:
        if self.type is not None and self.k == 0:
            self.k = 1
        check(self.type is not None or self.k == 0, "must be 0 when retrieval.type is null", "k")
        check(self.k >= 0, "must be >= 0", "k")
        check(
            self.type is not None or self.model_name is None,
            "is set but retrieval.type is null",
            "model_name",
        )
        check(
            self.type != "semantic" or self.model_name is not None,
            "is required for semantic retrieval",
            "model_name",
        )
        check(
            self.type != "random" or self.model_name is None,
            "is read only by semantic retrieval; random retrieval embeds nothing",
            "model_name",
        )
        check(
            self.index_name is None,
            "names an index in Ludwig's local cache, which is not read here: the examples come "
            "from the job's training split (kept in the artifact for predict); leave it null",
            "index_name",
        )


@dataclass
class PromptConfig:
    template: str | None = field(
        default=None,
        metadata={"help": "Prompt with {column} placeholders; {__task__}, {__sample__}."},
    )
    task: str | None = field(
        default=None, metadata={"help": "Task text; uses Ludwig's default template."}
    )
    use_chat_template: bool = field(
        default=False, metadata={"help": "Wrap the prompt in the tokenizer's chat template."}
    )
    retrieval: RetrievalConfig | None = field(default_factory=lambda: RetrievalConfig())

    def __post_init__(self) -> None:
        if self.retrieval is None:
            self.retrieval = RetrievalConfig()
        few_shot = self.retrieval.type is not None
        check(
            not few_shot or self.template is not None or self.task is not None,
            "few-shot examples are placed by a prompt: set prompt.task (Ludwig's few-shot "
            "template) or prompt.template with {__context__} (Ludwig ignores retrieval without "
            "either)",
            "retrieval.type",
        )
        if self.template is None and self.task is not None:
            self.template = DEFAULT_FEW_SHOT_TEMPLATE if few_shot else DEFAULT_TASK_TEMPLATE
        if self.template is not None:
            try:
                names = [
                    f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None
                ]
            except ValueError as exc:
                check(False, f"is not a valid template: {exc}", "template")
            check(
                all(n.isidentifier() for n in names),
                "placeholders must be plain column names like {question}",
                "template",
            )
            check(
                "__task__" not in names or self.task is not None,
                "uses {__task__} but prompt.task is not set",
                "template",
            )
            check(
                self.task is None or "__task__" in names,
                "prompt.task is set, so the template must place it with {__task__} (as in Ludwig)",
                "template",
            )
            check(
                bool(names),
                "must name at least one column, or {__sample__} for the input feature",
                "template",
            )
            check(
                not few_shot or "__context__" in names,
                "prompt.retrieval is set, so the template must place the examples with "
                "{__context__} (as in Ludwig)",
                "template",
            )
            check(
                few_shot or "__context__" not in names,
                "uses {__context__} but prompt.retrieval.type is null (no examples to place)",
                "template",
            )


@dataclass
class PostprocessorConfig:
    merge_adapter_into_base_model: bool = field(
        default=False, metadata={"help": "Write a merged full model instead of an adapter."}
    )
    progressbar: bool = False


@dataclass
class Adapter:
    """What every adapter type takes besides its own hyperparameters (which each subclass adds
    after these): the modules it wraps, saved adapter weights to continue from, and what is done
    with it after training. Each subclass fixes `type`; PEFT takes the rest under the same names
    (`services/trainer/recipes/generative/adapters.py`)."""

    type: str = ""
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names; null: the model's defaults; 'all-linear'."}
    )
    pretrained_adapter_weights: str | None = field(
        default=None, metadata={"help": "A saved adapter's folder: training continues it."}
    )
    postprocessor: PostprocessorConfig = field(default_factory=PostprocessorConfig)


@dataclass
class EvaConfig:
    """Ludwig's `adapter.eva_config` (PEFT's EvaConfig): EVA initialises LoRA's A from the SVD of
    each adapted layer's inputs over the job's training data, and redistributes the ranks."""

    rho: float = field(default=2.0, metadata={"help": "Rank budget factor for redistribution."})
    tau: float = field(default=0.99, metadata={"help": "Cosine similarity to stop the SVD at."})
    use_label_mask: bool = field(
        default=True, metadata={"help": "Only positions with a target enter the SVD."}
    )
    label_mask_value: int = -100
    whiten: bool = False
    adjust_scaling_factors: bool = True

    def __post_init__(self) -> None:
        check(self.rho >= 1.0, "must be >= 1", "rho")
        check(0.0 < self.tau <= 1.0, "must be in (0, 1]", "tau")


@dataclass
class LoftqConfig:
    """Ludwig's `adapter.loftq_config` (PEFT's LoftQConfig). LoftQ starts each adapted layer's
    LoRA at the best rank-r approximation of its 4-bit quantization error, so that the quantized
    base plus the adapter starts at the original weights (PEFT's replace_lora_weights_loftq)."""

    loftq_bits: int = field(
        default=4, metadata={"help": "Bits of the quantized base: 4 (Ludwig lists 2 and 8 too)."}
    )
    loftq_iter: int = field(
        default=1, metadata={"help": "Alternating quantize/SVD steps: 1 is built."}
    )

    def __post_init__(self) -> None:
        check(
            self.loftq_bits in (2, 4, 8), "must be one of 2, 4, 8 (Ludwig's options)", "loftq_bits"
        )
        check(
            self.loftq_bits == 4,
            "only 4 is built: the adapter is computed against the base bitsandbytes quantizes to "
            "4 bits (PEFT's replace_lora_weights_loftq); PEFT has no 2-bit quantizer, and 8-bit "
            "LoftQ would need the corrected base weights in the artifact",
            "loftq_bits",
        )
        check(self.loftq_iter >= 1, "must be a positive integer", "loftq_iter")
        check(
            self.loftq_iter == 1,
            "only 1 is built: further iterations quantize the base's weights minus the adapter, "
            "a base no stock model's quantization gives back (the artifact would need its copy)",
            "loftq_iter",
        )


@dataclass
class LoraAdapter(Adapter):
    type: Literal["lora"] = "lora"
    r: int = field(default=8, metadata={"help": "Rank of the update matrices."})
    alpha: int | None = field(
        default=None, metadata={"help": "Scaling numerator (alpha / r); null: 2 × r, as Ludwig."}
    )
    dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    bias_type: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    use_dora: bool = False
    init_lora_weights: (
        bool
        | Literal["default", "gaussian", "pissa", "olora", "eva", "orthogonal", "corda", "loftq"]
    ) = field(
        default="default",
        metadata={
            "help": "eva, corda: from the training data's activations (eva: eva_config; corda: "
            "saved as a rank-2r LoRA of the original base); loftq: against the 4-bit base "
            "(CUDA, bitsandbytes; loftq_config)."
        },
    )
    eva_config: EvaConfig | None = field(
        default=None, metadata={"help": "init_lora_weights: eva only; null: PEFT's defaults."}
    )
    loftq_config: LoftqConfig | None = field(
        default=None, metadata={"help": "init_lora_weights: loftq only, and needed there."}
    )

    def __post_init__(self) -> None:
        check_range(self.r, 1, MAX_LORA_RANK, "r")
        check(0.0 <= self.dropout < 1.0, "must be in [0, 1)", "dropout")
        init = self.init_lora_weights
        # Ludwig's rule: loftq names its settings; they mean nothing to another initialisation.
        check(
            init != "loftq" or self.loftq_config is not None,
            "must be set with init_lora_weights: loftq (as in Ludwig), e.g. "
            "{loftq_bits: 4, loftq_iter: 1}",
            "loftq_config",
        )
        check(
            self.loftq_config is None or init == "loftq",
            "is read only with init_lora_weights: loftq",
            "loftq_config",
        )
        check(
            init != "loftq" or not self.use_dora,
            "is not built with init_lora_weights: loftq (DoRA's magnitude would be taken from "
            "the base before LoftQ sets the adapter)",
            "use_dora",
        )
        check(
            init != "corda" or not self.use_dora,
            "is not built with init_lora_weights: corda (its artifact is converted to a plain "
            "LoRA of the original base, which has no DoRA magnitude)",
            "use_dora",
        )
        check(
            init != "orthogonal" or self.r % 2 == 0,
            "orthogonal initialisation needs an even adapter.r",
            "init_lora_weights",
        )
        if init == "eva":
            if self.eva_config is None:
                self.eva_config = EvaConfig()
        check(
            self.eva_config is None or init == "eva",
            "is read only with init_lora_weights: eva",
            "eva_config",
        )
        if self.alpha is None:
            self.alpha = 2 * self.r


@dataclass
class AdaloraAdapter(LoraAdapter):
    type: Literal["adalora"] = "adalora"  # type: ignore[assignment]
    target_r: int = 8
    init_r: int = 12
    tinit: int = 0
    tfinal: int = 0
    delta_t: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: int | None = field(default=None, metadata={"help": "null: the job's step count."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.use_dora is False, "is not supported with adalora", "use_dora")
        check(
            self.init_lora_weights in ("default", True),
            "PEFT's AdaLoRA initialises its own SVD triplets; only default is built",
            "init_lora_weights",
        )
        check(
            not self.use_rslora,
            "is not supported with adalora (PEFT's AdaLoRA scales by alpha alone)",
            "use_rslora",
        )
        check(
            self.r == 8,
            "is not read by adalora (PEFT ignores it): its ranks are init_r and target_r",
            "r",
        )
        check(self.init_r >= self.target_r >= 1, "needs init_r >= target_r >= 1", "target_r")


@dataclass
class Ia3Adapter(Adapter):
    type: Literal["ia3"] = "ia3"
    feedforward_modules: list[str] | str | None = None
    fan_in_fan_out: bool = False
    modules_to_save: list[str] | None = None
    init_ia3_weights: bool = True


@dataclass
class LohaAdapter(Adapter):
    type: Literal["loha"] = "loha"
    r: int = 8
    alpha: float = 8.0


@dataclass
class LokrAdapter(Adapter):
    type: Literal["lokr"] = "lokr"
    r: int = 8
    alpha: float = 8.0


@dataclass
class VeraAdapter(Adapter):
    type: Literal["vera"] = "vera"
    r: int = 256
    projection_prng_key: int = 0


@dataclass
class FourierftAdapter(Adapter):
    type: Literal["fourierft"] = "fourierft"
    n_frequency: int = 1000
    scaling: float = 150.0


@dataclass
class OftAdapter(Adapter):
    type: Literal["oft"] = "oft"
    r: int = 0
    oft_block_size: int = 32
    module_dropout: float = 0.0
    coft: bool = False
    eps: float = 6e-5


@dataclass
class BoftAdapter(Adapter):
    type: Literal["boft"] = "boft"
    boft_block_size: int = 4
    boft_n_butterfly_factor: int = 1
    boft_dropout: float = 0.05


@dataclass
class HraAdapter(Adapter):
    type: Literal["hra"] = "hra"
    r: int = 8
    apply_GS: bool = False


@dataclass
class LnTuningAdapter(Adapter):
    type: Literal["ln_tuning"] = "ln_tuning"


ADAPTERS: dict[str, type[Adapter]] = {
    "lora": LoraAdapter,
    "adalora": AdaloraAdapter,
    "ia3": Ia3Adapter,
    "loha": LohaAdapter,
    "lokr": LokrAdapter,
    "vera": VeraAdapter,
    "fourierft": FourierftAdapter,
    "oft": OftAdapter,
    "boft": BoftAdapter,
    "hra": HraAdapter,
    "ln_tuning": LnTuningAdapter,
}
# Ludwig lists these; PEFT provides them, but they are not wired here yet.
LUDWIG_ADAPTERS_NOT_BUILT = ("tinylora", "c3a", "waveft", "vblora")


@dataclass
class QuantizationConfig:
    bits: Literal[4, 8] = field(
        default=4, metadata={"help": "bitsandbytes weight bits (CUDA only)."}
    )
    llm_int8_threshold: float = 6.0
    llm_int8_has_fp16_weight: bool = False
    bnb_4bit_compute_dtype: Literal["float32", "float16", "bfloat16"] = field(
        default="float16", metadata={"help": "Ludwig's default; bfloat16 is faster on Ampere+."}
    )
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_quant_type: Literal["fp4", "nf4"] = "nf4"


@dataclass
class LlmPreprocessing:
    split: SplitConfig = field(default_factory=SplitConfig)
    sample_ratio: float = 1.0
    sample_size: int | None = None
    global_max_sequence_length: int | None = field(
        default=None, metadata={"help": "Prompt + target tokens; null: the model's context length."}
    )
    sequence_packing: bool = field(
        default=True, metadata={"help": "Pack samples into full rows (no cross-attention)."}
    )

    def __post_init__(self) -> None:
        check(0.0 < self.sample_ratio <= 1.0, "must be in (0, 1]", "sample_ratio")
        check(
            self.global_max_sequence_length is None or self.global_max_sequence_length >= 2,
            "must be >= 2",
            "global_max_sequence_length",
        )


@dataclass
class LlmConfig:
    base_model: str
    input_features: list[TextFeature]
    output_features: list[LlmOutputFeature]
    model_type: Literal["llm"] = "llm"
    prompt: PromptConfig = field(default_factory=PromptConfig)
    # A dict here is parsed in __post_init__ into the ADAPTERS class its `type` names.
    adapter: Any = field(
        default=None,
        metadata={
            "help": "lora | adalora | ia3 | ...; null: full fine-tuning.",
            "one_of": lambda value, parent: ADAPTERS[value["type"]],
        },
    )
    quantization: QuantizationConfig | None = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    generation: dict = field(default_factory=dict, metadata={"help": "GenerationConfig fields."})
    preprocessing: LlmPreprocessing = field(default_factory=LlmPreprocessing)
    backend: BackendConfig = field(default_factory=BackendConfig)
    model_parameters: dict | None = None
    hyperopt: dict | None = None
    defaults: dict | None = None
    ludwig_version: str | None = None
    seed: int = 42

    def __post_init__(self) -> None:
        # Not a config key: what validation noticed without refusing (said in the first event).
        self.warnings: list[str] = []
        self.differences: list[str] = []
        check(
            len(self.input_features) == 1,
            "model_type llm takes exactly one text input feature",
            "input_features",
        )
        check(
            len(self.output_features) == 1,
            "model_type llm takes exactly one output feature (text or category)",
            "output_features",
        )
        check(self.hyperopt is None, "hyperopt is not supported", "hyperopt")
        # `defaults:` is applied to the features before parsing (ludwig_saved), then dropped.
        check(self.defaults is None, "is applied before parsing; pass the raw config", "defaults")
        check(
            self.model_parameters is None,
            "is not supported (rope_scaling, neftune_noise_alpha)",
            "model_parameters",
        )
        if isinstance(self.adapter, dict):
            kind = self.adapter.get("type", "lora")
            check(
                kind not in LUDWIG_ADAPTERS_NOT_BUILT,
                f"adapter {kind!r} (in Ludwig's list) is not built here; built: "
                + ", ".join(ADAPTERS),
                "adapter.type",
            )
            if kind not in ADAPTERS:
                raise ConfigError(
                    f"adapter {kind!r} is not one of {', '.join(map(repr, ADAPTERS))}",
                    field="adapter.type",
                )
            self.adapter = parse(ADAPTERS[kind], {**self.adapter, "type": kind}, "adapter")
        elif self.adapter is not None and not isinstance(self.adapter, tuple(ADAPTERS.values())):
            raise ConfigError(
                "expected a mapping with a type (" + ", ".join(ADAPTERS) + ") or null",
                field="adapter",
            )
        self._resolve_trainer()
        self._resolve_generation()
        if getattr(self.adapter, "init_lora_weights", None) == "loftq":
            self._resolve_loftq()
        if self.quantization is not None:
            check(
                self.adapter is not None,
                "a quantized base model can only be trained with an adapter",
                "quantization",
            )
            check(
                getattr(self.adapter, "init_lora_weights", None) != "corda",
                "corda decomposes the base's full-precision weights; it is not built on a "
                "quantized base",
                "adapter.init_lora_weights",
            )
        self._check_precision()

    def _check_precision(self) -> None:
        """fp8 (torchao's float8 training) converts the base's bf16 linear layers: it needs a GPU
        (the worker checks which one), trains full models and LoRA, and has nothing to convert
        on a quantized base. Named here, at validation, not when the job runs."""
        if self.trainer.precision != "fp8":
            return
        key = "trainer.precision"
        check(
            self.quantization is None,
            "fp8 runs the base's bf16 linear layers as float8 GEMMs; a quantized base "
            "(quantization) has none: drop one of the two",
            key,
        )
        check(
            self.backend.trainer.use_gpu,
            "fp8 needs a CUDA GPU of compute capability 8.9+; backend.trainer.use_gpu is false",
            key,
        )
        check(
            self.adapter is None or self.adapter.type == "lora",
            f"fp8 is built for full fine-tuning and adapter type lora, not {self.adapter.type!r}"
            if self.adapter is not None
            else "",
            key,
        )

    def _check_compile_mode(self) -> None:
        """CUDA graphs (compile_mode: reduce-overhead) replay fixed kernels on fixed addresses:
        what would change them between steps (another process's shards, a quantized base's
        kernels, recomputed activations) is refused here; batch shapes, known only from the
        data, are checked when the job starts (recipe.py)."""
        t = self.trainer
        if t.compile_mode == "default":
            return
        key = "trainer.compile_mode"
        check(t.compile, f"{t.compile_mode} is a mode of trainer.compile: set it to true", key)
        check(
            self.backend.trainer.use_gpu,
            f"{t.compile_mode} replays CUDA graphs: it needs a CUDA GPU; "
            "backend.trainer.use_gpu is false",
            key,
        )
        check(
            self.backend.trainer.world_size == 1,
            f"{t.compile_mode} is built for one worker process (one GPU), not "
            f"{self.backend.trainer.world_size}: use compile_mode: default with DDP/FSDP",
            key,
        )
        check(
            self.quantization is None,
            f"{t.compile_mode} is not built over a quantized base (bitsandbytes' kernels are "
            "not tested inside CUDA graphs): drop one of the two",
            key,
        )
        check(
            self.adapter is None or self.adapter.type == "lora",
            f"{t.compile_mode} is built for full fine-tuning and adapter type lora, not "
            f"{self.adapter.type!r}"
            if self.adapter is not None
            else "",
            key,
        )
        check(
            not t.enable_gradient_checkpointing,
            f"{t.compile_mode} does not combine with trainer.enable_gradient_checkpointing: "
            "the recomputation runs outside the recorded graphs",
            key,
        )

    def _resolve_loftq(self) -> None:
        """LoftQ's adapter is computed against the base bitsandbytes quantizes to 4 bits: without
        a quantization block the job quantizes as LoftQ does (nf4, no double quantization),
        where Ludwig holds the same quantized values dequantized; the block is written into the
        resolved config, so the artifact records the base its adapter pairs with."""
        if self.quantization is None:
            self.quantization = QuantizationConfig(
                bits=4,
                bnb_4bit_compute_dtype="bfloat16",
                bnb_4bit_use_double_quant=False,
                bnb_4bit_quant_type="nf4",
            )
        check(
            self.quantization.bits == 4,
            "init_lora_weights: loftq is built for a 4-bit base (loftq_bits: 4)",
            "quantization.bits",
        )
        check(
            not self.adapter.postprocessor.merge_adapter_into_base_model,
            "is not built with init_lora_weights: loftq: the adapter corrects the 4-bit base's "
            "quantization error, so merged into the full-precision base it would count it twice",
            "adapter.postprocessor.merge_adapter_into_base_model",
        )

    def _resolve_trainer(self) -> None:
        t = self.trainer
        check(
            t.type in ("finetune", "none"),
            f"trainer type {t.type!r} is for ecd; an llm takes finetune or none",
            "trainer.type",
        )
        if t.type == "none":
            check(
                self.adapter is None,
                "trainer.type is none (zero-shot, nothing trained): an adapter would stay at "
                "its initialisation; drop it, or set trainer.type: finetune",
                "adapter",
            )
            if t.eval_batch_size in (None, "auto"):
                t.eval_batch_size = 2
            t.batch_size = 1 if t.batch_size == "auto" else t.batch_size  # Ludwig's; unread
            return
        # Inductor already fuses what Liger does, and Liger's Triton kernels inside compiled
        # blocks fail to trace on torch 2.11 (measured: half the compiled speed for LoRA).
        check(
            not (t.use_liger_kernel and t.compile),
            "is for eager training: do not combine it with trainer.compile: true",
            "trainer.use_liger_kernel",
        )
        self._check_compile_mode()
        if t.batch_size == "auto":
            self.differences.append("trainer.batch_size: auto is not tuned for throughput")
            t.batch_size = 1 if t.effective_batch_size == "auto" else None
        if t.eval_batch_size in (None, "auto"):
            t.eval_batch_size = t.batch_size or 2
        if t.learning_rate == "auto":
            t.learning_rate = 2e-5 if self.adapter is None else 2e-4
            self.differences.append(
                f"trainer.learning_rate: auto is {t.learning_rate} here "
                "(Ludwig searches for a rate)"
            )
        world = self.backend.trainer.world_size
        if t.batch_size is None:  # auto with an effective size: Ludwig derives it
            accum = 1 if t.gradient_accumulation_steps == "auto" else t.gradient_accumulation_steps
            t.batch_size = max(1, t.effective_batch_size // accum // world)
            t.eval_batch_size = t.eval_batch_size or 2
        if t.gradient_accumulation_steps == "auto":
            if t.effective_batch_size == "auto":
                t.gradient_accumulation_steps = 1
            else:
                per_step = t.batch_size * world
                check(
                    t.effective_batch_size % per_step == 0,
                    f"must be a multiple of batch_size × workers ({per_step})",
                    "trainer.effective_batch_size",
                )
                t.gradient_accumulation_steps = t.effective_batch_size // per_step
        effective = t.batch_size * t.gradient_accumulation_steps * world
        check(
            t.effective_batch_size in ("auto", effective),
            f"is {t.effective_batch_size} but batch_size × gradient_accumulation_steps × workers "
            f"is {effective}",
            "trainer.effective_batch_size",
        )
        t.effective_batch_size = effective
        if t.validation_field is None:
            t.validation_field = self.output_features[0].name
        if t.validation_metric is None:
            t.validation_metric = "loss"
        check(
            t.validation_metric in ("loss", "perplexity", "token_accuracy"),
            "must be loss, perplexity or token_accuracy",
            "trainer.validation_metric",
        )
        check(
            t.regularization_lambda == 0.0,
            "is not supported for llm (regularization_type is read only when it is > 0)",
            "trainer.regularization_lambda",
        )
        check(
            t.bucketing_field is None,
            "is not supported (packing fills rows instead)",
            "trainer.bucketing_field",
        )
        if t.layers_to_freeze_regex is not None:
            try:
                re.compile(t.layers_to_freeze_regex)
            except re.error as exc:
                raise ConfigError(
                    f"is not a valid regular expression: {exc}",
                    field="trainer.layers_to_freeze_regex",
                ) from None

    def _resolve_generation(self) -> None:
        """Ludwig's defaults under the user's keys. What transformers refuses is an error; what it
        only warns about (e.g. `temperature` without `do_sample`) is accepted, and the warning is
        kept in `self.warnings` for the job's first event."""
        from transformers import GenerationConfig

        known = set(GenerationConfig().to_dict())
        for key in self.generation:
            if key not in known:
                raise ConfigError("is not a GenerationConfig field", field=join("generation", key))
        user_set_max = self.generation.get("max_new_tokens") is not None
        merged = {**GENERATION_DEFAULTS, **self.generation}
        if not user_set_max:
            merged["max_new_tokens"] = resolve_max_new_tokens(self, None)
        self.warnings.extend(_transformers_generation_warnings(self.generation))
        try:
            GenerationConfig(**generation_for_transformers(merged)).validate(strict=True)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid generation settings: {exc}", field="generation") from None
        self.generation = merged

    @property
    def reads_input_column(self) -> bool:
        """Whether the input feature's own column is read: with no template, or one that places
        it with {__sample__}. Otherwise Ludwig fills the feature (e.g. `prompt`) from the
        template's columns, and it need not be a column at all."""
        if self.prompt.template is None:
            return True
        return "__sample__" in template_fields(self.prompt.template)

    def columns_read(self) -> dict[str, str]:
        """config path -> data set column, for every column this config reads."""
        out = {}
        if self.reads_input_column or self.prompt.retrieval.type is not None:
            # Few-shot retrieval reads the input column too: examples and queries are keyed by it.
            out["input_features[0].column"] = self.input.column
        for name in template_fields(self.prompt.template or ""):
            if name not in TEMPLATE_KEYWORDS:
                out.setdefault(f"prompt.template.{name}", name)
        out["output_features[0].column"] = self.output.column
        return out

    @property
    def input(self) -> TextFeature:
        return self.input_features[0]

    @property
    def output(self) -> LlmOutputFeature:
        return self.output_features[0]

    @property
    def merge_adapter(self) -> bool:
        return self.adapter is not None and self.adapter.postprocessor.merge_adapter_into_base_model


def _transformers_generation_warnings(generation: dict) -> list[str]:
    """What transformers says, without refusing, about the user's own generation keys."""
    import logging
    import warnings

    from transformers import GenerationConfig

    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("transformers.generation.configuration_utils")
    handler = _Keep(level=logging.WARNING)
    logger.addHandler(handler)
    # transformers says these once per process (`warning_once`); every config must hear them,
    # not only the first that draws a given warning (an earlier predict's parse would eat it).
    logger.warning_once = logger.warning  # type: ignore[attr-defined]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                GenerationConfig(**generation).validate()
            except (ValueError, TypeError):
                pass  # refused below, with the merged settings
    finally:
        logger.removeHandler(handler)
        logger.__dict__.pop("warning_once", None)
    notes = records + [str(w.message) for w in caught]
    return [f"generation: {' '.join(n.split())}" for n in dict.fromkeys(notes)]


# What the `none` trainer reads: evaluation only.
_NONE_TRAINER_READS = {
    "type",
    "eval_batch_size",
    "evaluate_training_set",
    "skip_all_evaluation",
    "seed",
}
# Ludwig's inference-only trainer writes these training keys too; at these values (or at ours, as
# a resolved config writes them) they say nothing, so a saved config loads.
_LUDWIG_NONE_TRAINER = {
    "learning_rate": 0.0002,
    "batch_size": 1,
    "base_learning_rate": 0.0,
    "should_shuffle": True,
    "epochs": 3,
    "train_steps": None,
    "eval_steps": None,
    "steps_per_checkpoint": 0,
    "checkpoints_per_epoch": 0,
    "early_stop": -1,
    "packing": False,
    "packing_max_sequences_per_pack": 8,
    "validation_field": None,
    "validation_metric": None,
    "enable_profiling": False,
}


def _inference_only_trainer(trainer: dict, path: str) -> dict:
    """Ludwig's `trainer.type: none`: nothing is trained, so a training key with a value of its
    own would be silently ignored; it is refused, naming the key. What is left is what we parse."""
    ours = to_dict(TrainerConfig(type="none"))
    kept = {}
    for key, value in trainer.items():
        if key in _NONE_TRAINER_READS:
            kept[key] = value
        elif key == "profiler" and not trainer.get("enable_profiling"):
            continue
        elif key in ours and value == ours[key]:
            kept[key] = value
        elif key in _LUDWIG_NONE_TRAINER and value == _LUDWIG_NONE_TRAINER[key]:
            continue
        else:
            raise ConfigError(
                "trainer.type is none (Ludwig's default for an llm: zero-shot generation, "
                "nothing trained), so this key would have no effect; set trainer.type: finetune "
                "to train",
                field=join(path, key),
            )
    return kept


def parse_llm(data: dict, path: str = "") -> LlmConfig:
    """Validate a `model_type: llm` config and fill every default."""
    if "tuner" in data:
        raise ConfigError(
            "Ludwig's older `tuner` key is now `adapter` (same fields); rename it",
            field=join(path, "tuner"),
        )
    for key in ("base_model", "input_features", "output_features"):
        if key not in data:
            raise ConfigError("is required", field=join(path, key))
    data = normalise_llm(data, path)
    trainer = dict(data.get("trainer") or {})
    # Ludwig's llm trainer is `none` (zero-shot) unless a type says otherwise.
    trainer.setdefault("type", "none")
    if trainer["type"] == "none":
        data["trainer"] = _inference_only_trainer(trainer, join(path, "trainer"))
    else:
        # Ludwig's finetune trainer is its ecd trainer with batch_size 1 and eval_batch_size 2.
        trainer.setdefault("batch_size", 1)
        trainer.setdefault("eval_batch_size", 2)
        if trainer.get("effective_batch_size", "auto") != "auto":
            trainer.setdefault("gradient_accumulation_steps", "auto")
        data["trainer"] = trainer
    cfg = parse(LlmConfig, data, path)
    if "missing_value_strategy" not in (_first_input(data).get("preprocessing") or {}):
        cfg.differences.append(
            "input_features[0].preprocessing.missing_value_strategy: drop_row (Ludwig's default "
            "is fill_with_const with fill_value <UNK>: a row whose input is missing is kept, "
            "its input read as the text <UNK>)"
        )
    return cfg


def _first_input(data: dict) -> dict:
    features = data.get("input_features")
    first = features[0] if isinstance(features, list) and features else None
    return first if isinstance(first, dict) else {}


def load_resolved_llm(data: dict) -> LlmConfig:
    """The `LlmConfig` that admission resolved, from its `to_dict` (a job's recorded config):
    rebuilt as it was, not validated or defaulted again (the generative worker loads it so)."""
    return from_dict(LlmConfig, data)


def differences_from_ludwig(cfg: LlmConfig) -> list[str]:
    """Where this job, as configured, deliberately does something other than Ludwig 0.17 would:
    recorded in the artifact's tunewire.json, listed in docs/ludwig.md, said in the first event."""
    out = list(getattr(cfg, "differences", []))
    if cfg.preprocessing.sequence_packing:
        out.append(
            "preprocessing.sequence_packing: on by default (Ludwig packs only with "
            "trainer.packing: true); samples share rows, attention never crosses them, and a "
            "step still takes trainer.batch_size examples"
        )
    if cfg.backend.trainer.use_gpu and not cfg.trainer.use_mixed_precision:
        out.append(
            "trainer.use_mixed_precision: false, yet a GPU with bf16 trains in bf16 "
            "(Ludwig trains in fp32)"
        )
    out += retrieval_differences(cfg.prompt.retrieval)
    if getattr(cfg.adapter, "init_lora_weights", None) == "loftq":
        out.append(
            "adapter.init_lora_weights: loftq trains on the base quantized by bitsandbytes "
            "(resolved_config.json's quantization block; without one in the config: 4-bit nf4, "
            "no double quantization, which Ludwig holds dequantized), and the adapter pairs with "
            "that quantized base; the initial adapter is scaled so that alpha/r times B A is "
            "the quantization error's rank-r part (PEFT ignores alpha/r there)"
        )
    if isinstance(cfg.adapter, AdaloraAdapter) and cfg.adapter.total_step is None:
        out.append(
            "adapter.total_step: null is the job's count of optimizer steps "
            "(Ludwig 0.17 schedules the rank budget over 10000)"
        )
    return out


def retrieval_differences(retrieval: RetrievalConfig) -> list[str]:
    """Where few-shot retrieval, as configured, differs from Ludwig 0.17's."""
    if retrieval.type is None:
        return []
    out = [
        "prompt.retrieval: the examples come from the job's training split whatever the split "
        "type (Ludwig 0.17 needs a fixed split column) and are kept in the artifact, so "
        "predict retrieves from the same rows (Ludwig keeps an index in its local cache)"
    ]
    if retrieval.type == "random":
        out.append(
            "prompt.retrieval.type: random draws are seeded by the job's seed and the row's "
            "input, so a row gets the same examples in every split and at predict (Ludwig draws "
            "from numpy's global state)"
        )
    else:
        out.append(
            "prompt.retrieval.type: semantic embeds the training rows through the embedder and "
            "its cache (Ludwig re-encodes them every run), ranks by cosine similarity (Ludwig: "
            "L2 distance, the same order for encoders that normalise, as sentence-transformers "
            "models do), and embeds a query as the examples are keyed, by its input alone "
            "(Ludwig embeds the whole row, its label included)"
        )
    return out
