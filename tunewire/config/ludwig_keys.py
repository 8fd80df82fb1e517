"""Every key the config accepts, who reads it, and how it stands against Ludwig 0.17.

`accepted_keys()` walks the schema's dataclasses (polymorphic sections by their type), so a key
added to the schema shows up here at once; `tests/test_ludwig_keys.py` fails when a key has no
registered consumer that reads it, and when `docs/ludwig.md` (written by
`scripts/gen_ludwig_doc.py` from this module) is stale.

Statuses: supported (Ludwig's meaning, tested), different (a recorded deliberate difference),
extension (a key of our own), refused (Ludwig's key or value that is not built, with why).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator

from tunewire.config import ecd, llm

# --------------------------------------------------------------------------- the walk


def _walk(cls: type, prefix: str) -> Iterator[tuple[str, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = None
        if dataclasses.is_dataclass(tp):
            inner = tp
        elif typing.get_origin(tp) is list and args and dataclasses.is_dataclass(args[0]):
            inner, path = args[0], path + "[]"
        elif len(args) == 1 and dataclasses.is_dataclass(args[0]):
            inner = args[0]
        if path == "adapter" and cls is llm.LlmConfig:
            for kind, adapter_cls in llm.ADAPTERS.items():
                yield from _walk(adapter_cls, f"adapter({kind})")
        elif path == "input_features[]" and cls is ecd.EcdConfig:
            yield from _walk_ecd_inputs()
        elif inner is not None:
            yield from _walk(inner, path)
        else:
            yield path, f


def _walk_ecd_inputs() -> Iterator[tuple[str, dataclasses.Field]]:
    for f in dataclasses.fields(ecd.InputFeature):
        if f.name in ("encoder", "preprocessing"):
            for kind, (enc, pre) in ecd._INPUT_SECTIONS.items():
                section = enc if f.name == "encoder" else pre
                yield from _walk(section, f"input_features[]({kind}).{f.name}")
        else:
            yield f"input_features[].{f.name}", f


def accepted_keys(model_type: str) -> list[tuple[str, dataclasses.Field]]:
    """(dotted path, dataclass field) of every key `model_type`'s schema accepts."""
    root = llm.LlmConfig if model_type == "llm" else ecd.EcdConfig
    return list(_walk(root, ""))


# --------------------------------------------------------------------------- consumers

# Where each key is read, by the longest matching prefix (`llm:` / `ecd:` scoped). A module reads
# a key when `.name`, `"name"` or `'name'` occurs in it; config modules count for keys resolved
# at validation (their effect is on other keys, e.g. effective_batch_size -> accumulation).
_GEN = "services/trainer/recipes/generative/"
_PRED = "services/trainer/recipes/predictive/"
CONSUMERS: dict[str, tuple[str, ...]] = {
    "llm:": (
        _GEN + "recipe.py",
        _GEN + "model.py",
        _GEN + "data.py",
        _GEN + "launch.py",
        _GEN + "predict.py",
        _GEN + "zero_shot.py",
        _GEN + "artifacts.py",
        "services/trainer/model_types.py",
        "tunewire/config/llm.py",
    ),
    "llm:adapter(": (_GEN + "model.py", _GEN + "adapters.py", _GEN + "artifacts.py"),
    # merge_adapter_into_base_model is read through LlmConfig.merge_adapter.
    **{f"llm:adapter({kind}).postprocessor.": ("tunewire/config/llm.py",) for kind in llm.ADAPTERS},
    # loftq_config's values are checked there (4 bits, 1 iteration: what adapters.py runs).
    "llm:adapter(lora).loftq_config.": ("tunewire/config/llm.py",),
    "llm:prompt.retrieval.": (_GEN + "retrieval.py", _GEN + "launch.py", _GEN + "predict.py"),
    "llm:input_features[]": (_GEN + "data.py", "tunewire/config/llm.py"),
    "llm:output_features[]": (_GEN + "data.py", "tunewire/config/llm.py"),
    "llm:trainer.": (
        _GEN + "recipe.py",
        _GEN + "model.py",
        _GEN + "zero_shot.py",
        _GEN + "optimizers.py",
        "services/trainer/optimizer.py",
        "services/trainer/schedule.py",
        "services/trainer/clipping.py",
        "tunewire/config/llm.py",
    ),
    "llm:preprocessing.": (
        _GEN + "recipe.py",
        _GEN + "data.py",
        "services/trainer/admission.py",
        "services/trainer/splits.py",
        "tunewire/config/llm.py",
    ),
    "llm:backend.": (_GEN + "launch.py", _GEN + "worker.py", _GEN + "recipe.py"),
    "ecd:": (
        _PRED + "recipe.py",
        _PRED + "loop.py",
        _PRED + "data.py",
        _PRED + "embed.py",
        _PRED + "adapted.py",
        _PRED + "finish.py",
        _PRED + "calibration.py",
        _PRED + "metrics.py",
        "services/trainer/model_types.py",
        "tunewire/heads.py",
        "tunewire/features.py",
        "tunewire/config/ecd.py",
    ),
    "ecd:trainer.": (
        _PRED + "loop.py",
        _PRED + "recipe.py",
        "services/trainer/optimizer.py",
        "services/trainer/schedule.py",
        "services/trainer/clipping.py",
        "tunewire/config/ecd.py",
    ),
    "ecd:preprocessing.": (
        "services/trainer/admission.py",
        "services/trainer/splits.py",
        "tunewire/config/ecd.py",
    ),
    "ecd:input_features[](text).encoder.adapter.": (_PRED + "adapted.py",),
}

# Keys whose only accepted value is the one that does nothing (Ludwig's default): there is no
# consumer, and any other value is refused at validation, naming the key.
INERT: dict[str, str] = {
    "llm:model_parameters": "refused unless null: rope_scaling and neftune are not built",
    "llm:hyperopt": "refused unless null: hyperparameter search is not built",
    "llm:defaults": (
        "applied to the features of each type as Ludwig applies it, then dropped "
        "(tunewire/config/ludwig_saved.py)"
    ),
    "llm:ludwig_version": "recorded, read by nobody (Ludwig writes it into saved configs)",
    "llm:prompt.retrieval.index_name": (
        "refused unless null: it names an index in Ludwig's local cache; the examples here are "
        "the job's training split, kept in the artifact"
    ),
    "llm:trainer.learning_rate_scheduler.warmup_evaluations": "refused unless 0",
    "llm:trainer.learning_rate_scheduler.reduce_on_plateau": "refused unless 0",
    "llm:trainer.learning_rate_scheduler.t_0": "refused unless null (no cosine restarts)",
    "llm:trainer.learning_rate_scheduler.t_mult": "read only with t_0, which is refused",
    "llm:trainer.learning_rate_scheduler.eta_min": "read only with t_0, which is refused",
    "llm:trainer.regularization_lambda": "refused unless 0 for llm",
    "llm:adapter(adalora).init_lora_weights": (
        "refused unless default: PEFT's AdaLoRA initialises its own SVD triplets"
    ),
    "llm:adapter(adalora).use_rslora": "refused unless false: PEFT's AdaLoRA scales by alpha alone",
    "llm:adapter(adalora).r": "refused unless 8: AdaLoRA's ranks are init_r and target_r",
    **{
        f"llm:adapter(adalora).eva_config.{k}": "read only with init_lora_weights: eva, "
        "which adalora refuses"
        for k in ("rho", "tau", "use_label_mask", "label_mask_value", "whiten")
    },
    "llm:adapter(adalora).eva_config.adjust_scaling_factors": (
        "read only with init_lora_weights: eva, which adalora refuses"
    ),
    **{
        f"llm:adapter(adalora).loftq_config.{k}": "read only with init_lora_weights: loftq, "
        "which adalora refuses"
        for k in ("loftq_bits", "loftq_iter")
    },
    "llm:trainer.regularization_type": "read only with regularization_lambda > 0 (refused)",
    "llm:trainer.bucketing_field": "refused unless null (packing fills rows instead)",
    "llm:trainer.max_batch_size": "bounds batch_size search, which is not built (auto is 1)",
    "llm:trainer.optimizer.momentum": "sgd only",
    "llm:trainer.use_mixed_precision": (
        "a recorded difference, read by nobody: the model trains in bf16 on GPUs that have it "
        "whatever the value (Ludwig: false trains in fp32)"
    ),
    **{
        f"llm:adapter({kind}).postprocessor.progressbar": "cosmetic in Ludwig (a bar while "
        "merging); accepted, no effect"
        for kind in llm.ADAPTERS
    },
    "ecd:hyperopt": "refused unless null: hyperparameter search is not built",
    "ecd:defaults": (
        "applied to the features of each type as Ludwig applies it, then dropped "
        "(tunewire/config/ludwig_saved.py)"
    ),
    "ecd:ludwig_version": "recorded, read by nobody (Ludwig writes it into saved configs)",
    "ecd:backend.type": "local only",
    **{
        f"ecd:backend.trainer.{k}": "refused unless the default: a head trains in the "
        "trainer's own process (torchrun workers are for llm)"
        for k in ("strategy", "num_workers", "nnodes", "use_gpu", "reshard_after_forward")
    },
    "ecd:input_features[].tied": "refused unless null",
    "ecd:preprocessing.oversample_minority": "refused unless null",
    "ecd:preprocessing.undersample_majority": "refused unless null",
    "ecd:trainer.type": "trainer only (finetune belongs to llm)",
    "ecd:trainer.learning_rate_scheduler.warmup_evaluations": "refused unless 0",
    "ecd:trainer.learning_rate_scheduler.reduce_on_plateau": "refused unless 0",
    "ecd:trainer.learning_rate_scheduler.t_0": "refused unless null (no cosine restarts)",
    "ecd:trainer.learning_rate_scheduler.t_mult": "read only with t_0, which is refused",
    "ecd:trainer.learning_rate_scheduler.eta_min": "read only with t_0, which is refused",
    "ecd:trainer.max_batch_size": "caps an auto batch_size (resolved at validation)",
    "ecd:trainer.use_liger_kernel": "refused unless false: Liger's kernels are for model_type: llm",
    **{
        f"ecd:trainer.{k}": f"refused unless {v!r}: {why}"
        for k, (v, why) in (ecd._UNBUILT_TRAINER_KEYS.items())
    },
}

# --------------------------------------------------------------------------- against Ludwig

DIFFERENT: dict[str, str] = {
    "llm:preprocessing.sequence_packing": (
        "on by default (Ludwig: trainer.packing, off): samples share rows, attention never "
        "crosses them; a step still takes batch_size examples"
    ),
    "llm:trainer.learning_rate": "auto is 2e-4 with an adapter, 2e-5 without (no rate search)",
    "llm:trainer.batch_size": "auto is 1 (no throughput search)",
    "llm:adapter(lora).init_lora_weights": (
        "the others as in Ludwig (eva, corda: from the training data; corda saved as a "
        "rank-2r LoRA of the original base); loftq (CUDA, bitsandbytes) trains on the base "
        "quantized to 4 bits (without a "
        "quantization block: nf4, no double quantization; Ludwig holds the same values "
        "dequantized) and the adapter pairs with it (predict loads it so); its start is scaled "
        "so that alpha/r times B A is the quantization error's rank-r part (PEFT ignores "
        "alpha/r); merging it is refused"
    ),
    "llm:adapter(adalora).total_step": (
        "null (our default) is the job's count of optimizer steps; Ludwig 0.17 writes 10000"
    ),
    "llm:prompt.template": (
        "{__sample__} is the input text as is (Ludwig JSON-escapes it, quotes stripped)"
    ),
    "llm:prompt.retrieval.type": (
        "examples from the training split whatever the split type (Ludwig needs a fixed split), "
        "kept in the artifact for predict (an upload carries them); random draws seeded by "
        "seed and the row's input"
    ),
    "llm:prompt.retrieval.model_name": (
        "run by the embedder (cached: a second job over the same rows computes nothing); "
        "cosine ranking (Ludwig: L2); a query embedded by its input alone (Ludwig: whole row)"
    ),
    "ecd:trainer.batch_size": (
        "auto is 128 (capped by max_batch_size and effective_batch_size, dividing the latter), "
        "not searched"
    ),
    "ecd:trainer.gradient_accumulation_steps": (
        "Ludwig's sizes and auto rules; steps, train_steps and the schedule count optimizer "
        "steps, and an epoch's last step takes the micro-batches left (Ludwig counts "
        "micro-batches and drops an epoch's unfinished accumulation)"
    ),
    "ecd:combiner.type": (
        "concat when the config has no combiner; Ludwig 0.17 builds ft_transformer there for 3 "
        "or more input features (not built here)"
    ),
    "ecd:input_features[](text).encoder.reduce_output": (
        "null is mean over the tokens (last for llm); Ludwig's default is sum for "
        "auto_transformer and cls_pooled for bert"
    ),
    "ecd:output_features[].preprocessing.normalization": (
        "a number output left unset is zscore (Ludwig: null, the target as is), its predictions "
        "mapped back; an explicit null is honoured (the target as is)"
    ),
    "llm:input_features[].preprocessing.missing_value_strategy": (
        "drop_row by default (Ludwig: fill_with_const, a missing input read as <UNK>)"
    ),
    "ecd:input_features[](text).encoder.type": (
        "pretrained encoders only; Ludwig's own are not built"
    ),
}

EXTENSIONS: dict[str, str] = {
    "llm:prompt.use_chat_template": "wrap the prompt in the tokenizer's chat template",
    "llm:trainer.seed": "a seed for training alone (default: the top-level seed)",
    "llm:trainer.precision": (
        "auto (bf16 on a GPU that has it, else fp32) or fp8: torchao's float8 training of the "
        "decoder's linears, an adapter's frozen base included (compute capability 8.9+). "
        "Ludwig 0.17 has no training precision key; its quantization.backend: torchao with "
        "mode float8 stores weights in fp8, a different thing (refused here)"
    ),
    "llm:trainer.compile_mode": (
        "default or reduce-overhead (torch.compile's modes, as transformers' torch_compile_mode): "
        "the compiled blocks' forward and backward replayed as CUDA graphs. Needs compile: "
        "true, one CUDA GPU, batches of one shape (training samples of one length) and full "
        "fine-tuning or lora; evaluation and generation run the "
        "blocks eagerly. Ludwig 0.17 has only trainer.compile"
    ),
    "ecd:trainer.seed": "a seed for training alone (default: the top-level seed)",
    "llm:backend.trainer.strategy": "ddp or fsdp (FSDP2) torchrun workers",
    "llm:backend.trainer.num_workers": "worker processes (GPUs) per node",
    "llm:backend.trainer.nnodes": "nodes; more than one is launched by the cluster",
    "llm:backend.trainer.use_gpu": "false trains on CPU (gloo)",
    "llm:backend.trainer.reshard_after_forward": "fsdp: free gathered weights after forward",
}

# Ludwig 0.17 keys (and values) that are not accepted here at all, with why.
LUDWIG_REFUSED: dict[str, str] = {
    "llm:adapters": "named multi-adapter registries are not built; use one `adapter` (null is "
    "accepted)",
    "llm:trust_remote_code": "models with remote code are not loaded (false is accepted)",
    "llm:is_multimodal": "vision-language models are not built (false is accepted)",
    "llm:quantization.backend": "bitsandbytes only (torchao not built; bitsandbytes is accepted)",
    "llm:trainer.type: dpo, kto, orpo, grpo": "preference/reward trainers are not built",
    "llm:adapter.type: tinylora, c3a, waveft, vblora": "not wired here yet",
    "llm:adapter(lora).loftq_config.loftq_bits: 2, 8": (
        "4 is built (PEFT has no 2-bit quantizer; 8-bit LoftQ needs a corrected base copy)"
    ),
    "llm:adapter(lora).loftq_config.loftq_iter > 1": (
        "1 is built: more iterations re-quantize a corrected base the artifact cannot carry"
    ),
    "llm:adapter(lora).loraplus_lr_ratio, rank_pattern, alpha_pattern, layer_replication": (
        "not built"
    ),
    "llm:output_features[].decoder.match type: json_schema": "contains and regex are built",
    "llm:output_features[].decoder.constrain_to_vocabulary: true": "not built",
    "ecd:combiner.type (other than concat)": "only the concat combiner is built",
    "ecd:trainer.increase_batch_size_on_plateau*": "batch size schedules are not built",
    "ecd:trainer.learning_rate_scaling": "a single process trains a head; nothing to scale",
    "ecd:trainer.loss_balancing*": "losses are summed with their weights",
    "ecd:trainer.contrastive_pretrain*": "not built",
    "ecd:trainer.modality_dropout, model_soup*": "not built",
    "ecd:trainer.enable_profiling, profiler": "not built",
    "llm:trainer.optimizer.type (others than adam, adamw, sgd, paged_adamw, paged_adamw_8bit, "
    "adamw_8bit)": "not built; the bitsandbytes ones need a CUDA GPU",
    "ecd:trainer.optimizer.type (others than adam, adamw, sgd)": "not built",
}


# Defaults that the llm parser sets before the shared trainer section (Ludwig's llm trainers).
DEFAULT_OVERRIDES: dict[str, object] = {
    "llm:trainer.type": "none",
    "llm:trainer.batch_size": 1,
    "llm:trainer.eval_batch_size": 2,
    "ecd:output_features[].preprocessing.normalization": "zscore (number), else null",
}


def status(key: str) -> tuple[str, str]:
    """(status, note) of a `model:path` key."""
    if key in EXTENSIONS:
        return "extension", EXTENSIONS[key]
    if key in DIFFERENT:
        return "different", DIFFERENT[key]
    if key in INERT:
        return "refused (other values)", INERT[key]
    return "supported", ""


def consumers(key: str) -> tuple[str, ...]:
    """The modules registered as reading `model:path` (longest prefix wins)."""
    best = max((p for p in CONSUMERS if key.startswith(p)), key=len, default=None)
    return CONSUMERS[best] if best is not None else ()
