"""Ludwig-saved configs: `model_hyperparameters.json` as Ludwig 0.17 writes it, every default
filled in, loads here with the meaning it has in Ludwig.

A saved config spells out keys tunewire has no field for (`proc_column`, `trainer.model_soup`,
`decoder.weights_initializer`, a whole `defaults:` block per feature type...). The rule, applied
before the schema parses a config:

- a Ludwig key at Ludwig's default changes nothing, so it is dropped (the tables below are
  Ludwig 0.17's defaults, read from its schema; `DERIVED` marks values Ludwig computes itself,
  such as `proc_column`, which change nothing whatever they are);
- the same key at any other value is refused, naming it;
- `defaults:` is applied as Ludwig applies it: each feature type's sections are merged under the
  features of that type (the feature's own keys win; a section whose `type` differs from the
  feature's is not merged; inputs take `encoder`/`preprocessing`, outputs `decoder`/`loss`).
  What lands in a feature then goes through the same rule and the schema, so a default with an
  effect is honoured or refused like the feature's own key. Sections of types no feature has
  are never read, in Ludwig as here.

Keys tunewire does have go to the schema as they are.
"""

from __future__ import annotations

import copy
from typing import Any

from tunewire.config.schema import ConfigError, join


class _Derived:
    """A value Ludwig derives from other keys or the data (any value changes nothing)."""

    def __repr__(self) -> str:
        return "<derived by Ludwig>"


DERIVED = _Derived()

# ----------------------------------------------------------------------------- Ludwig defaults

LLM_TOP = {"adapters": None, "is_multimodal": False, "trust_remote_code": False}
ECD_TOP = {"preset": None}

TRAINER = {
    "base_learning_rate": 0.0,
    "contrastive_pretrain_epochs": 0,
    "contrastive_pretrain_learnable_temperature": True,
    "contrastive_pretrain_projection_dim": 128,
    "contrastive_pretrain_temperature": 0.07,
    "enable_profiling": False,
    "profiler": DERIVED,  # read only with enable_profiling: true, which is refused
    "increase_batch_size_eval_metric": "loss",
    "increase_batch_size_eval_split": "training",
    "increase_batch_size_on_plateau": 0,
    "increase_batch_size_on_plateau_patience": 5,
    "increase_batch_size_on_plateau_rate": 2.0,
    "learning_rate_scaling": "linear",
    "loss_balancing": "none",
    "loss_balancing_alpha": 1.5,
    "loss_balancing_lr": 0.01,
    "loss_balancing_preference_vector": None,
    "loss_balancing_tchebycheff_weight": 0.5,
    "modality_dropout": 0.0,
    "model_soup": None,
    "model_soup_top_k": 5,
    "packing": False,
    "packing_max_sequences_per_pack": 8,
}
# Read only by decays that are not built (onecycle, polynomial, inverse_sqrt, wsd, plateau).
LR_SCHEDULER = {
    "div_factor": 25.0,
    "final_div_factor": 10000.0,
    "inverse_sqrt_warmup_steps": 4000,
    "max_lr": None,
    "pct_start": 0.3,
    "polynomial_end_lr": 0.0,
    "polynomial_power": 1.0,
    "reduce_eval_metric": "loss",
    "reduce_eval_split": "training",
    "reduce_on_plateau_patience": 10,
    "reduce_on_plateau_rate": 0.1,
    "staircase": False,
    "wsd_decay_fraction": 0.1,
    "wsd_stable_fraction": 0.8,
    "wsd_warmup_fraction": 0.1,
}
OPTIMIZER = {"dampening": 0.0, "nesterov": False}
LORA = {
    "alpha_pattern": None,
    "rank_pattern": None,
    "layer_replication": None,
    "loraplus_lr_ratio": None,
}
LLM_PREPROCESSING = {"oversample_minority": None, "undersample_majority": None}
QUANTIZATION = {"backend": "bitsandbytes", "mode": None, "qat": False}
# Ludwig's GenerationConfig defaults; only keys this transformers no longer knows are dropped.
GENERATION = {"forced_decoder_ids": None, "max_time": None, "guidance_scale": None}

FEATURE = {"active": True, "proc_column": DERIVED}
OUTPUT_FEATURE = {
    **FEATURE,
    "dependencies": [],
    "reduce_dependencies": "sum",
    "reduce_input": "sum",
    "input_size": None,
    "num_classes": None,
    "class_similarities": None,
    "default_validation_metric": DERIVED,  # a constant of the feature type
    "clip": None,  # number
    "softmax": False,  # vector
}
# Ludwig writes null for these on vector outputs.
VECTOR_OUTPUT = {**OUTPUT_FEATURE, "reduce_dependencies": None, "reduce_input": None}

# llm: Ludwig sets the text features' tokenizer, padding and tokenizer path from base_model
# whatever they say (`_set_llm_tokenizers`), so any value there changes nothing.
LLM_TEXT_PREPROCESSING = {
    "tokenizer": DERIVED,
    "padding": DERIVED,
    "pretrained_model_name_or_path": DERIVED,
    "cache_encoder_embeddings": False,
    "compute_idf": False,
    "computed_fill_value": DERIVED,
    "most_common": 20000,
    "ngram_size": 2,
    "padding_symbol": "<PAD>",
    "unknown_symbol": "<UNK>",
    "sequence_length": None,
    "vocab_file": None,
    "prompt": {
        "retrieval": {"index_name": None, "k": 0, "model_name": None, "type": None},
        "task": None,
        "template": None,
    },
}
LLM_ENCODER = {"type": "passthrough", "adapter": None, "skip": False}
_FC = {
    "fc_activation": "relu",
    "fc_bias_initializer": "zeros",
    "fc_weights_initializer": "xavier_uniform",
    "fc_dropout": 0.0,
    "fc_layers": None,
    "fc_norm": None,
    "fc_norm_params": None,
    "fc_output_size": 256,
    "fc_use_bias": True,
    "num_fc_layers": 0,
    "input_size": None,
}
LLM_DECODER = {
    **_FC,
    "match_strategy": "contains",
    "max_new_tokens": DERIVED,  # copied from generation.max_new_tokens
    "pretrained_model_name_or_path": DERIVED,
    "tokenizer": DERIVED,
    "vocab_file": "",
    "vocab_size": None,
}
LLM_LOSS = {
    "type": "next_token_softmax_cross_entropy",
    "weight": 1.0,
    "class_weights": None,
    "class_similarities": None,
    "class_similarities_temperature": 0,
    "confidence_penalty": 0,
    "robust_lambda": 0,
    "unique": False,
}

# ecd, per input type
ECD_ENCODER = {
    "text": {"skip": False, "use_pretrained": True, "vocab": None, "vocab_size": None},
    "number": {"adapter": None, "skip": False},
    "binary": {"adapter": None, "skip": False},
    "category": {
        "adapter": None,
        "skip": False,
        "vocab": None,
        "embedding_initializer": None,
        "embeddings_on_cpu": False,
        "embeddings_trainable": True,
        "pretrained_embeddings": None,
    },
}
ECD_INPUT_PREPROCESSING = {
    "text": {
        "compute_idf": False,
        "computed_fill_value": DERIVED,
        "most_common": 20000,
        "ngram_size": 2,
        "padding": "right",
        "padding_symbol": "<PAD>",
        "unknown_symbol": "<UNK>",
        # Ludwig sets it to the encoder's model for pretrained encoders.
        "pretrained_model_name_or_path": DERIVED,
        "sequence_length": None,
        "vocab_file": None,
        "prompt": LLM_TEXT_PREPROCESSING["prompt"],
    },
    "number": {
        "computed_fill_value": DERIVED,
        "computed_outlier_fill_value": DERIVED,
        "outlier_strategy": None,
        "outlier_threshold": 3.0,
    },
    "binary": {"computed_fill_value": DERIVED, "fill_value": None},
    "category": {
        "cache_encoder_embeddings": False,
        "computed_fill_value": DERIVED,
        "fill_value": "<UNK>",
        "lowercase": False,
    },
}
ECD_DECODER = {
    "bias_initializer": "zeros",
    "weights_initializer": "xavier_uniform",
    "fc_bias_initializer": "zeros",
    "fc_weights_initializer": "xavier_uniform",
    "fc_norm_params": None,
    "input_size": None,
    "num_classes": None,
    "calibration": None,
    "mc_dropout_samples": 0,
    # projector (vector)
    "activation": None,
    "clip": None,
    "multiplier": 1.0,
    "output_size": None,
}
ECD_LOSS = {"class_similarities": None, "class_similarities_temperature": 0, "unique": False}
# Outputs drop rows with a missing label (the only strategy built), so fill values are unread.
ECD_OUTPUT_PREPROCESSING = {
    "fill_value": DERIVED,
    "computed_fill_value": DERIVED,
    "computed_outlier_fill_value": DERIVED,
    "outlier_strategy": None,
    "outlier_threshold": 3.0,
    "lowercase": False,
    "most_common": 10000,
    "cache_encoder_embeddings": False,
    "vector_size": None,
}
CONCAT_COMBINER = {
    "batch_ensemble": False,
    "bias_initializer": "zeros",
    "weights_initializer": "xavier_uniform",
    "flatten_inputs": False,
    "norm": None,
    "norm_params": None,
    "num_ensemble_members": 4,
    "residual": False,
    "use_bias": True,
}

# ----------------------------------------------------------------------------- the rule


def _drop_defaults(section: Any, table: dict, path: str) -> None:
    """Drop the keys of `table` that sit at Ludwig's default; refuse one that does not."""
    if not isinstance(section, dict):
        return
    for key in [k for k in section if k in table]:
        default, value = table[key], section[key]
        if default is DERIVED or value == default:
            del section[key]
            continue
        raise ConfigError(
            f"Ludwig's key is not built here: only its default {default!r} is accepted "
            f"(it would change nothing), got {value!r}",
            field=join(path, key),
        )


def _drop_section(owner: dict, key: str, table: dict, path: str) -> None:
    """`_drop_defaults` on `owner[key]`, removing the section when nothing is left of it."""
    section = owner.get(key)
    if isinstance(section, dict):
        _drop_defaults(section, table, join(path, key))
        if not section:
            del owner[key]


def _merge(default: dict, own: dict, exclude: set[str]) -> dict:
    """Ludwig's merge of a `defaults:` entry under a feature: the feature's keys win, nested
    sections merge unless their `type`s differ."""
    out = {k: copy.deepcopy(v) for k, v in default.items() if k not in exclude}
    for key, value in own.items():
        base = out.get(key)
        if (
            isinstance(base, dict)
            and isinstance(value, dict)
            and base.get("type") == value.get("type", base.get("type"))
        ):
            out[key] = _merge(base, value, exclude)
        else:
            out[key] = value
    return out


def _apply_defaults(data: dict, path: str) -> None:
    defaults = data.pop("defaults", None)
    if defaults is None:
        return
    if not isinstance(defaults, dict):
        raise ConfigError(
            "expected a mapping of feature type to sections", field=join(path, "defaults")
        )
    for key, exclude in (
        ("input_features", {"decoder", "loss"}),
        ("output_features", {"encoder", "preprocessing"}),
    ):
        features = data.get(key)
        if not isinstance(features, list):
            continue
        for i, feature in enumerate(features):
            if isinstance(feature, dict) and isinstance(defaults.get(_kind(feature)), dict):
                features[i] = _merge(defaults[feature["type"]], feature, exclude)


def _trainer(data: dict, path: str) -> None:
    trainer = data.get("trainer")
    if not isinstance(trainer, dict):
        return
    where = join(path, "trainer")
    if trainer.get("enable_profiling") is False:
        trainer.pop("profiler", None)
    _drop_defaults(trainer, TRAINER, where)
    _drop_section(trainer, "learning_rate_scheduler", LR_SCHEDULER, where)
    _drop_section(trainer, "optimizer", OPTIMIZER, where)


def _features(data: dict, key: str, path: str, each) -> None:
    features = data.get(key)
    if isinstance(features, list):
        for i, feature in enumerate(features):
            if isinstance(feature, dict):
                each(feature, join(join(path, key), i))


# ----------------------------------------------------------------------------- llm


def _llm_input(feature: dict, path: str) -> None:
    _drop_defaults(feature, {**FEATURE, "tied": None}, path)
    _drop_section(feature, "encoder", LLM_ENCODER, path)
    _drop_section(feature, "preprocessing", LLM_TEXT_PREPROCESSING, path)


def _llm_output(feature: dict, path: str) -> None:
    _drop_defaults(feature, OUTPUT_FEATURE, path)
    _drop_section(feature, "decoder", LLM_DECODER, path)
    _drop_section(feature, "loss", LLM_LOSS, path)
    _drop_section(feature, "preprocessing", LLM_TEXT_PREPROCESSING, path)


def normalise_llm(data: dict, path: str = "") -> dict:
    """A copy of an llm config with Ludwig's do-nothing keys dropped and `defaults:` applied."""
    from transformers import GenerationConfig

    data = copy.deepcopy(data)
    _drop_defaults(data, LLM_TOP, path)
    _apply_defaults(data, path)
    _trainer(data, path)
    adapter = data.get("adapter")
    if isinstance(adapter, dict) and adapter.get("type", "lora") in ("lora", "adalora"):
        _drop_defaults(adapter, LORA, join(path, "adapter"))
    _drop_section(data, "quantization", QUANTIZATION, path)
    _drop_section(data, "preprocessing", LLM_PREPROCESSING, path)
    generation = data.get("generation")
    if isinstance(generation, dict):
        known = set(GenerationConfig().to_dict())
        gone = {k: v for k, v in GENERATION.items() if k not in known}
        _drop_defaults(generation, gone, join(path, "generation"))
    _features(data, "input_features", path, _llm_input)
    _features(data, "output_features", path, _llm_output)
    return data


# ----------------------------------------------------------------------------- ecd


def _kind(feature: dict) -> str | None:
    """The feature's type where it is a string; anything else is left for validation to refuse
    by its field path (a list or a dict is no key of the tables below)."""
    kind = feature.get("type")
    return kind if isinstance(kind, str) else None


def _ecd_input(feature: dict, path: str) -> None:
    kind = _kind(feature)
    _drop_defaults(feature, FEATURE, path)
    _drop_section(feature, "encoder", ECD_ENCODER.get(kind, {}), path)
    pre = feature.get("preprocessing")
    if kind == "category" and isinstance(pre, dict):
        # Ludwig fills a missing category with the constant <UNK>: our fill_with_unk.
        if (
            pre.get("missing_value_strategy") == "fill_with_const"
            and pre.get("fill_value", "<UNK>") == "<UNK>"
        ):
            pre["missing_value_strategy"] = "fill_with_unk"
    _drop_section(feature, "preprocessing", ECD_INPUT_PREPROCESSING.get(kind, {}), path)


def _ecd_output(feature: dict, path: str) -> None:
    table = VECTOR_OUTPUT if feature.get("type") == "vector" else OUTPUT_FEATURE
    pre = feature.get("preprocessing")
    if isinstance(pre, dict) and pre.get("vector_size") is not None:
        # Ludwig's vector_size sits in preprocessing; ours on the feature.
        feature.setdefault("vector_size", pre.pop("vector_size"))
    _drop_defaults(feature, table, path)
    _drop_section(feature, "decoder", ECD_DECODER, path)
    _drop_section(feature, "loss", ECD_LOSS, path)
    _drop_section(feature, "preprocessing", ECD_OUTPUT_PREPROCESSING, path)


def normalise_ecd(data: dict, path: str = "") -> dict:
    """A copy of an ecd config with Ludwig's do-nothing keys dropped and `defaults:` applied."""
    data = copy.deepcopy(data)
    _drop_defaults(data, ECD_TOP, path)
    _apply_defaults(data, path)
    _trainer(data, path)
    combiner = data.get("combiner")
    if isinstance(combiner, dict) and combiner.get("type", "concat") == "concat":
        _drop_defaults(combiner, CONCAT_COMBINER, join(path, "combiner"))
    _features(data, "input_features", path, _ecd_input)
    _features(data, "output_features", path, _ecd_output)
    return data


# Where each table applies, for docs/ludwig.md.
TABLES: dict[str, dict] = {
    "llm: top level": LLM_TOP,
    "ecd: top level": ECD_TOP,
    "trainer": TRAINER,
    "trainer.learning_rate_scheduler": LR_SCHEDULER,
    "trainer.optimizer": OPTIMIZER,
    "llm: adapter (lora, adalora)": LORA,
    "llm: quantization": QUANTIZATION,
    "llm: preprocessing": LLM_PREPROCESSING,
    "llm: generation (keys this transformers no longer has)": GENERATION,
    "input_features[]": FEATURE,
    "output_features[]": OUTPUT_FEATURE,
    "llm: input_features[].encoder": LLM_ENCODER,
    "llm: features' preprocessing": LLM_TEXT_PREPROCESSING,
    "llm: output_features[].decoder": LLM_DECODER,
    "llm: output_features[].loss": LLM_LOSS,
    **{f"ecd: {kind} input encoder": table for kind, table in ECD_ENCODER.items()},
    **{f"ecd: {kind} input preprocessing": t for kind, t in ECD_INPUT_PREPROCESSING.items()},
    "ecd: output_features[].decoder": ECD_DECODER,
    "ecd: output_features[].loss": ECD_LOSS,
    "ecd: output_features[].preprocessing": ECD_OUTPUT_PREPROCESSING,
    "ecd: combiner (concat)": CONCAT_COMBINER,
}
