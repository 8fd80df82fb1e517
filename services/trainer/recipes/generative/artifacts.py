"""The artifact a generative job leaves, loadable with stock transformers/peft.

- adapter: adapter_config.json + adapter_model.safetensors + tokenizer + generation_config.json
- merged or full: config.json + model*.safetensors + tokenizer + generation_config.json
plus `resolved_config.json` (every default) and `tunewire.json` (kind, base model, task, metrics).

The trained weights are loaded into a fresh CPU copy of the base before saving, so the files are the
same whether training ran on one process, DDP or FSDP2 (whose live parameters are shards).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunewire.config.llm import (
    LlmConfig,
    generation_for_transformers,
    resolve_max_new_tokens,
)

WRAPPER_PREFIX = "lm."


def kind(cfg: LlmConfig) -> str:
    return "peft_adapter" if cfg.adapter is not None and not cfg.merge_adapter else "full_model"


def _fresh_model(
    cfg: LlmConfig,
    trainable: dict[str, torch.Tensor],
    dtype: torch.dtype,
    *,
    total_steps: int = 1,
    rank_pattern: dict | None = None,
):
    """A CPU copy of the base (with the adapter, if any) holding the trained weights; an AdaLoRA
    `rank_pattern` makes peft save each layer at the rank it kept."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from services.trainer.recipes.generative.model import peft_config

    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=dtype)
    if cfg.adapter is not None:
        model = get_peft_model(model, peft_config(cfg.adapter, total_steps=total_steps))
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
) -> None:
    from transformers import GenerationConfig

    artifact_dir.mkdir(parents=True, exist_ok=True)
    model = _fresh_model(cfg, trainable, dtype, total_steps=total_steps, rank_pattern=rank_pattern)
    if cfg.adapter is not None and cfg.merge_adapter:
        model = model.merge_and_unload()
    model.save_pretrained(artifact_dir)
    tokenizer.save_pretrained(artifact_dir)
    generation = generation_for_transformers(cfg.generation)
    if generation.get("max_new_tokens") is None:
        context = getattr(model.config, "max_position_embeddings", None)
        generation["max_new_tokens"] = resolve_max_new_tokens(cfg, context) or 32
    GenerationConfig(
        **generation, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    ).save_pretrained(artifact_dir)
    (artifact_dir / "resolved_config.json").write_text(json.dumps(config_dict, indent=2))
    nested: dict = {}
    for m in metrics:
        nested.setdefault(m["split"], {}).setdefault(m["feature"], {})[m["name"]] = m["value"]
    meta = {
        "kind": kind(cfg),
        "base_model": cfg.base_model,
        "task": "text-generation",
        "metrics": nested,
        "job_id": job_id,
    }
    (artifact_dir / "tunewire.json").write_text(json.dumps(meta, indent=2))
