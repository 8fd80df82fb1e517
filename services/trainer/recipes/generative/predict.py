"""Generation (and test metrics) from a generative artifact, with the artifact's own prompt and
generation settings, overridable per call."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from services.trainer.context import MetricValue
from services.trainer.recipes.generative import retrieval
from services.trainer.recipes.generative.data import build_samples, collate_padded, render_prompt
from services.trainer.recipes.generative.errors import PreconditionError
from services.trainer.recipes.generative.model import CausalLMWithLoss, quantization_config
from tunewire.config.llm import (
    SAMPLING_ONLY,
    generation_for_transformers,
    parse_llm,
    resolve_max_new_tokens,
)
from tunewire.devices import compute_dtype, default_device
from tunewire.errors import FailedPrecondition, InvalidArgument
from tunewire.model_init import building_modules

BATCH = 8


def is_zero_shot(artifact_dir: Path) -> bool:
    meta = artifact_dir / "tunewire.json"
    return meta.exists() and json.loads(meta.read_text()).get("kind") == "zero_shot"


@building_modules()
def load_artifact(artifact_dir: Path, device: torch.device, base_model: str | None = None):
    """(model, tokenizer) from an adapter or a full/merged artifact, in eval mode on `device`; a
    zero-shot artifact's are the base model's own (`base_model`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_cfg = artifact_dir / "adapter_config.json"
    dtype = compute_dtype(device)
    quant = paired_quantization(artifact_dir, device) if base_model is None else None
    placed = {"quantization_config": quant, "device_map": {"": device}} if quant else {}

    def base(name: str, what: str):
        try:
            return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **placed)
        except OSError as exc:
            raise FailedPrecondition(
                f"{what} {name!r} cannot be loaded: {exc}", field="model"
            ) from None

    if base_model is not None:
        model = base(base_model, "the base model")
        artifact_dir = Path(base_model)  # the tokenizer too
    elif adapter_cfg.exists():
        from peft import PeftModel

        name = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        model = PeftModel.from_pretrained(base(name, "the adapter's base model"), artifact_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(artifact_dir, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(artifact_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return (model if quant else model.to(device)).eval(), tokenizer


def paired_quantization(artifact_dir: Path, device: torch.device):
    """The bitsandbytes settings a LoftQ adapter's base is loaded with (the ones its job trained
    on, from resolved_config.json): its adapter corrects that quantized base's error, so on the
    full-precision base it would count the error twice. None for every other artifact."""
    resolved = artifact_dir / "resolved_config.json"
    if not (artifact_dir / "adapter_config.json").exists() or not resolved.exists():
        return None
    raw = json.loads(resolved.read_text())
    if (raw.get("adapter") or {}).get("init_lora_weights") != "loftq":
        return None
    try:
        return quantization_config(parse_llm(raw), device)
    except PreconditionError as exc:
        raise FailedPrecondition(
            f"this LoftQ adapter pairs with the 4-bit base its job trained on: {exc}",
            field="model",
        ) from None


def generation_from_config(cfg, tokenizer, model_config):
    """The GenerationConfig a job's `generation` section means (Ludwig's max_new_tokens rule
    applied with the model's context length)."""
    from transformers import GenerationConfig

    settings = generation_for_transformers(cfg.generation)
    if settings.get("max_new_tokens") is None:
        context = getattr(model_config, "max_position_embeddings", None)
        settings["max_new_tokens"] = resolve_max_new_tokens(cfg, context) or 32
    # The tokenizer's special tokens unless the config names its own.
    tokens = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    return GenerationConfig(**{**tokens, **settings})


def generation_config(artifact_dir: Path, overrides: dict | None, base=None):
    """The artifact's generation settings (a zero-shot artifact's, `base`: built from its
    resolved config), with the call's overrides."""
    from transformers import GenerationConfig

    gen = base if base is not None else GenerationConfig.from_pretrained(artifact_dir)
    known = set(GenerationConfig().to_dict())
    for key, value in (overrides or {}).items():
        if key not in known:
            raise InvalidArgument(
                "is not a GenerationConfig field", field=f"generation_config.{key}"
            )
        setattr(gen, key, value)
    if not gen.do_sample:  # the artifact's sampling knobs mean nothing to greedy decoding
        for key in SAMPLING_ONLY:
            if hasattr(gen, key):
                setattr(gen, key, None)
    try:
        gen.validate(strict=True)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(
            f"invalid generation settings: {exc}", field="generation_config"
        ) from None
    return gen


def predict_generative(
    artifact_dir: Path,
    df: pd.DataFrame,
    generation_overrides: dict | None,
    batch_size: int = 0,
    embedder: Callable[[], Any] | None = None,
    model_names: Mapping[str, str] | None = None,
) -> tuple[list[str], list[MetricValue]]:
    """Generated text per row, `batch_size` rows a pass (default 8); loss/perplexity/
    token_accuracy ("test") where the output column is present. A model made with
    `prompt.retrieval` takes each row's examples from the pool its artifact keeps (`embedder`,
    a function making the embedder's client, is asked for by semantic retrieval only;
    `model_names`, `--model NAME=PATH`, finds its encoder in an artifact from the Hub)."""
    artifact_dir = Path(artifact_dir)
    cfg = parse_llm(json.loads((artifact_dir / "resolved_config.json").read_text()))
    for path, column in cfg.columns_read().items():
        if column not in df.columns and not path.startswith("output_features"):
            raise InvalidArgument(
                f"the data set lacks the column {column!r} ({path})", field="dataset_id"
            )
    few_shot = retrieval.load(cfg, artifact_dir, embedder, model_names)
    if few_shot is not None:
        df = few_shot.apply(df)
    device = default_device()
    zero_shot = is_zero_shot(artifact_dir)
    model, tokenizer = load_artifact(
        artifact_dir, device, base_model=cfg.base_model if zero_shot else None
    )
    base = generation_from_config(cfg, tokenizer, model.config) if zero_shot else None
    gen = generation_config(artifact_dir, generation_overrides, base)
    torch.manual_seed(cfg.seed)  # Ludwig samples by default: the same call gives the same text
    batch = batch_size or BATCH
    texts = generate_texts(cfg, model, tokenizer, df, gen, device, batch)
    metrics = []
    if cfg.output.column in df.columns:
        metrics = _metrics(cfg, model, tokenizer, df, device, batch)
    if cfg.output.type == "category":  # Ludwig's category_extractor: the label is the answer
        texts = [cfg.output.extract_label(t) for t in texts]
        if cfg.output.column in df.columns:
            truth = df[cfg.output.column].astype(str).tolist()
            hits = sum(p == t for p, t in zip(texts, truth)) / max(1, len(truth))
            metrics.append(MetricValue("test", cfg.output.name, "accuracy", hits))
    return texts, metrics


@torch.no_grad()
def generate_texts(
    cfg, model, tokenizer, df: pd.DataFrame, gen, device: torch.device, batch: int = BATCH
) -> list[str]:
    tokenizer.padding_side = "left"  # generation continues from each prompt's last token
    prompts = [render_prompt(cfg, row, tokenizer) for row in df.to_dict("records")]
    out: list[str] = []
    for start in range(0, len(prompts), batch):
        enc = tokenizer(prompts[start : start + batch], return_tensors="pt", padding=True).to(
            device
        )
        ids = model.generate(**enc, generation_config=gen)
        new = ids[:, enc["input_ids"].shape[1] :]
        out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return out


@torch.no_grad()
def _metrics(
    cfg, model, tokenizer, df: pd.DataFrame, device: torch.device, batch: int
) -> list[MetricValue]:
    model_max = getattr(model.config, "max_position_embeddings", 2048)
    samples = build_samples(cfg, df, tokenizer, model_max)
    wrapper = CausalLMWithLoss(model)
    loss = tokens = correct = 0.0
    for start in range(0, len(samples), batch):
        stats = wrapper(
            collate_padded(samples[start : start + batch], tokenizer.pad_token_id).to(device)
        )
        loss += float(stats.loss_sum)
        tokens += float(stats.n_tokens)
        correct += float(stats.n_correct)
    mean = loss / max(tokens, 1.0)
    feature = cfg.output.name
    return [
        MetricValue("test", feature, "loss", mean),
        MetricValue("test", feature, "perplexity", math.exp(min(mean, 50.0))),
        MetricValue("test", feature, "token_accuracy", correct / max(tokens, 1.0)),
    ]
