"""The `trainer:` section, shared by the predictive (ecd) and generative (llm) recipes.

Ludwig's keys and spellings. `"auto"` values are resolved by the recipe and written back into the
resolved config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tunewire.config.schema import MAX_EPOCHS, MAX_TRAIN_STEPS, check, check_range

# bitsandbytes' optimizers in Ludwig's schema: built for llm on a GPU, refused for ecd.
BITSANDBYTES_OPTIMIZERS = ("paged_adamw", "paged_adamw_8bit", "adamw_8bit")

# Ludwig's gradient clipping when the user says nothing.
CLIPPING_DEFAULTS = {"clipglobalnorm": 0.5, "clipnorm": None, "clipvalue": None}

# Ludwig's llm trainers that train on preferences or rewards rather than targets.
LUDWIG_PREFERENCE_TRAINERS = ("dpo", "kto", "orpo", "grpo")


@dataclass
class OptimizerConfig:
    type: Literal["adam", "adamw", "sgd", "paged_adamw", "paged_adamw_8bit", "adamw_8bit"] = field(
        default="adam", metadata={"help": "Optimizer; adam/adamw use torch's fused kernels on GPU."}
    )
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999], metadata={"help": "Adam betas."}
    )
    eps: float = field(default=1e-8, metadata={"help": "Adam epsilon."})
    weight_decay: float = field(default=0.0, metadata={"help": "Decoupled weight decay (adamw)."})
    momentum: float = field(default=0.0, metadata={"help": "SGD momentum."})
    amsgrad: bool = field(default=False, metadata={"help": "Adam's AMSGrad variant."})

    def __post_init__(self) -> None:
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "must be two numbers in [0, 1)",
            "betas",
        )
        check(self.eps > 0, "must be > 0", "eps")
        check(self.weight_decay >= 0, "must be >= 0", "weight_decay")
        check(
            not (self.amsgrad and self.type in BITSANDBYTES_OPTIMIZERS),
            f"bitsandbytes' {self.type} has no AMSGrad variant (its 32-bit AdamW ignores the "
            "flag, the 8-bit ones refuse it)",
            "amsgrad",
        )


@dataclass
class LearningRateSchedulerConfig:
    decay: Literal["linear", "cosine", "exponential"] | None = field(
        default=None, metadata={"help": "Decay after warmup; null keeps the rate constant."}
    )
    warmup_fraction: float = field(default=0.0, metadata={"help": "Fraction of steps warming up."})
    warmup_evaluations: int = field(default=0, metadata={"help": "Ludwig's alternative warmup."})
    decay_rate: float = field(default=0.96, metadata={"help": "Exponential decay rate."})
    decay_steps: int = field(default=10000, metadata={"help": "Exponential decay period."})
    reduce_on_plateau: int = field(default=0, metadata={"help": "Not supported: must be 0."})
    t_0: int | None = None
    t_mult: int = 1
    eta_min: float = 0.0

    def __post_init__(self) -> None:
        check(0.0 <= self.warmup_fraction < 1.0, "must be in [0, 1)", "warmup_fraction")
        check(
            self.reduce_on_plateau == 0,
            "reduce_on_plateau is not supported; use decay",
            "reduce_on_plateau",
        )
        check(
            self.warmup_evaluations == 0,
            "is not supported; use warmup_fraction",
            "warmup_evaluations",
        )
        check(self.t_0 is None, "cosine restarts are not supported", "t_0")


@dataclass
class TrainerConfig:
    type: Literal["trainer", "finetune", "none"] = field(
        default="trainer", metadata={"help": "`trainer` (ecd) or `finetune` (llm)."}
    )
    epochs: int = field(default=100, metadata={"help": "Passes over the training set."})
    train_steps: int | None = field(default=None, metadata={"help": "Stop after this many steps."})
    batch_size: int | Literal["auto"] = field(
        default="auto", metadata={"help": "Examples per step."}
    )
    eval_batch_size: int | Literal["auto"] | None = field(
        default=None, metadata={"help": "Examples per eval step."}
    )
    gradient_accumulation_steps: int | Literal["auto"] = field(
        default=1, metadata={"help": "Micro-batches per optimizer step."}
    )
    effective_batch_size: int | Literal["auto"] = field(
        default="auto", metadata={"help": "batch_size × accumulation × world size."}
    )
    learning_rate: float | Literal["auto"] = field(
        default=0.001, metadata={"help": "Peak learning rate."}
    )
    learning_rate_scheduler: LearningRateSchedulerConfig = field(
        default_factory=LearningRateSchedulerConfig
    )
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    regularization_type: Literal["l1", "l2", "l1_l2"] | None = field(
        default="l2", metadata={"help": "Read only when regularization_lambda > 0."}
    )
    regularization_lambda: float = field(
        default=0.0, metadata={"help": "Weight of the regularization term."}
    )
    gradient_clipping: dict | None = field(
        default_factory=lambda: dict(CLIPPING_DEFAULTS),
        metadata={"help": "Ludwig's: global norm 0.5; null disables clipping."},
    )
    early_stop: int = field(
        default=5,
        metadata={"help": "Evaluations without improvement before stopping; -1 disables."},
    )
    validation_field: str | None = field(
        default=None, metadata={"help": "Output feature to watch; default: the first."}
    )
    validation_metric: str | None = field(
        default=None, metadata={"help": "Metric to watch; default: loss."}
    )
    steps_per_checkpoint: int = field(
        default=0, metadata={"help": "Checkpoint every N steps (0: each epoch)."}
    )
    checkpoints_per_epoch: int = field(
        default=0, metadata={"help": "Alternative to steps_per_checkpoint."}
    )
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N steps (llm)."})
    evaluate_training_set: bool = field(
        default=False, metadata={"help": "Also report train metrics."}
    )
    should_shuffle: bool = field(
        default=True, metadata={"help": "Shuffle the training set each epoch."}
    )
    enable_gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward."}
    )
    use_mixed_precision: bool = field(
        default=False, metadata={"help": "bf16/fp16 autocast where available."}
    )
    bucketing_field: str | None = None
    max_batch_size: int = 1099511627776
    skip_all_evaluation: bool = False
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead"] = field(
        default="default",
        metadata={
            "help": "llm with compile: true on one CUDA GPU: reduce-overhead replays each "
            "transformer block's forward and backward as CUDA graphs (torch.compile's mode), "
            "for steps whose shape never changes."
        },
    )
    use_liger_kernel: bool = field(
        default=False,
        metadata={
            "help": "llm on a CUDA GPU: Liger's fused RMSNorm, SwiGLU and RoPE kernels "
            "(needs the liger-kernel package)."
        },
    )
    precision: Literal["auto", "fp8"] = field(
        default="auto",
        metadata={
            "help": "llm: auto trains in bf16 on a GPU that has it, else fp32; fp8 runs the "
            "decoder's linear layers (an adapter's frozen base) as float8 GEMMs through "
            "torchao on a GPU of compute capability 8.9+ (needs torchao; fast with compile)."
        },
    )
    seed: int | None = field(
        default=None, metadata={"help": "Overrides the top-level seed for training."}
    )
    layers_to_freeze_regex: str | None = field(
        default=None, metadata={"help": "Parameters whose names match stay frozen (llm)."}
    )

    @staticmethod
    def precheck(data: dict) -> None:
        # The type first: a Ludwig trainer we do not build is named as such, not reported through
        # the first of its own keys (`dpo_beta`) as unknown here.
        kind = data.get("type", "trainer")
        check(
            kind not in LUDWIG_PREFERENCE_TRAINERS,
            f"trainer type {kind!r} (Ludwig's preference-tuning trainer) is not built; "
            "use finetune or none",
            "type",
        )
        check(
            kind in ("trainer", "finetune", "none"),
            f"trainer type {kind!r} is not one of 'trainer' (ecd), 'finetune' or 'none' (llm)",
            "type",
        )

    def __post_init__(self) -> None:
        check_range(self.epochs, 1, MAX_EPOCHS, "epochs")
        if self.train_steps is not None:
            check_range(self.train_steps, 1, MAX_TRAIN_STEPS, "train_steps")
        check(self.batch_size == "auto" or self.batch_size >= 1, "must be >= 1", "batch_size")
        check(
            self.learning_rate == "auto" or self.learning_rate > 0, "must be > 0", "learning_rate"
        )
        check(
            self.gradient_accumulation_steps == "auto" or self.gradient_accumulation_steps >= 1,
            "must be >= 1",
            "gradient_accumulation_steps",
        )
        check(self.regularization_lambda >= 0, "must be >= 0", "regularization_lambda")
        check(self.early_stop >= -1, "must be -1 (off) or >= 0", "early_stop")
        if self.gradient_clipping is not None:
            allowed = {"clipglobalnorm", "clipnorm", "clipvalue"}
            extra = sorted(set(self.gradient_clipping) - allowed)
            # The message names the first unknown key, so it is built only when there is one.
            check(
                not extra,
                f"unknown key {extra[0]!r} (allowed: {sorted(allowed)})" if extra else "",
                "gradient_clipping",
            )
            # Ludwig fills the keys left out with its defaults (so clipvalue alone still clips
            # the global norm at 0.5).
            self.gradient_clipping = {**CLIPPING_DEFAULTS, **self.gradient_clipping}
