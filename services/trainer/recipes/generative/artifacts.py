"""The artifact a generative job leaves, loadable with stock transformers/peft.

- adapter: adapter_config.json + adapter_model.safetensors + tokenizer + generation_config.json
- merged or full: config.json + model*.safetensors + tokenizer + generation_config.json
plus `resolved_config.json` (every default) and `tunewire.json` (kind, base model, task, metrics).

The trained weights are loaded into a fresh CPU copy of the base before saving, so the files are the
same whether training ran on one process, DDP or FSDP2 (whose live parameters are shards).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from tunewire.config.llm import LlmConfig

WRAPPER_PREFIX = "lm."


ZERO_SHOT = "zero_shot"


def kind(cfg: LlmConfig) -> str:
    if cfg.trainer.type == "none":
        return ZERO_SHOT
    return "peft_adapter" if cfg.adapter is not None and not cfg.merge_adapter else "full_model"


def _fresh_model(
    cfg: LlmConfig,
    trainable: dict[str, torch.Tensor],
    dtype: torch.dtype,
    *,
    total_steps: int = 1,
    rank_pattern: dict | None = None,
    patterns: dict | None = None,
    adapter=None,
):
    """A CPU copy of the base (with the adapter, if any) holding the trained weights; an AdaLoRA
    `rank_pattern` makes peft save each layer at the rank it kept, EVA's `patterns` build each
    layer at the rank and scaling EVA gave it."""
    from transformers import AutoModelForCausalLM

    from services.trainer.recipes.generative import adapters

    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype)
    adapter = adapter if adapter is not None else cfg.adapter
    if getattr(adapter, "init_lora_weights", None) == "loftq":
        # The trained weights are loaded over it: LoftQ's start (which needs the 4-bit base)
        # would be computed for nothing.
        adapter = dataclasses.replace(adapter, init_lora_weights="default", loftq_config=None)
    if adapter is not None:
        model = adapters.apply(model, adapter, total_steps, patterns=patterns)
        if rank_pattern is not None:
            model.peft_config["default"].rank_pattern = rank_pattern
    state = {k.removeprefix(WRAPPER_PREFIX): v for k, v in trainable.items()}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(
            f"trained weights do not fit the base model: {result.unexpected_keys[:3]}"
        )
    return model


def write(
    artifact_dir: Path,
    *,
    cfg: LlmConfig,
    config_dict: dict,
    tokenizer,
    trainable: dict[str, torch.Tensor],
    metrics: list[dict],
    job_id: str,
    dtype: torch.dtype,
    total_steps: int = 1,
    rank_pattern: dict | None = None,
    patterns: dict | None = None,
    adapter=None,
) -> None:
    """`adapter`: the section the weights in `trainable` fit, when not the job's own (a CorDA
    adapter is saved converted to a plain LoRA of the original base)."""
    from services.trainer.recipes.generative.predict import generation_from_config

    artifact_dir.mkdir(parents=True, exist_ok=True)
    model = _fresh_model(
        cfg,
        trainable,
        dtype,
        total_steps=total_steps,
        rank_pattern=rank_pattern,
        patterns=patterns,
        adapter=adapter,
    )
    if cfg.adapter is not None and cfg.merge_adapter:
        model = model.merge_and_unload()
    model.save_pretrained(artifact_dir)
    tokenizer.save_pretrained(artifact_dir)
    generation_from_config(cfg, tokenizer, model.config).save_pretrained(artifact_dir)
    (artifact_dir / "resolved_config.json").write_text(json.dumps(config_dict, indent=2))
    meta = {
        "kind": kind(cfg),
        "base_model": cfg.base_model,
        "task": "text-generation",
        "metrics": _metrics_tree(metrics),
        "job_id": job_id,
    }
    (artifact_dir / "tunewire.json").write_text(json.dumps(meta, indent=2))


def _metrics_tree(metrics: list[dict]) -> dict:
    nested: dict = {}
    for m in metrics:
        nested.setdefault(m["split"], {}).setdefault(m["feature"], {})[m["name"]] = m["value"]
    return nested


def write_zero_shot(
    artifact_dir: Path,
    *,
    cfg: LlmConfig,
    config_dict: dict,
    predictions,
    metrics: list[dict],
    job_id: str,
) -> None:
    """What a `trainer.type: none` job leaves: the resolved config, the predictions and metrics,
    and a reference to the base model (no weights: nothing was trained)."""
    artifact_dir.mkdir(parents=True, exist_ok=True)
    (artifact_dir / "resolved_config.json").write_text(json.dumps(config_dict, indent=2))
    predictions.to_csv(artifact_dir / "predictions.csv", index=False)
    meta = {
        "kind": ZERO_SHOT,
        "base_model": cfg.base_model,
        "task": "text-generation",
        "metrics": _metrics_tree(metrics),
        "job_id": job_id,
    }
    (artifact_dir / "tunewire.json").write_text(json.dumps(meta, indent=2))
