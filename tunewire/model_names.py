"""Encoders named at start: `--model NAME=PATH` (repeatable), taken by the embedder, the trainer,
`serve http` and `serve all`.

A name stands for its path wherever a model is named: an EncoderSpec's `model` (the embedder
resolves it), a job config's encoder (the trainer writes the path into the job's config, so the
artifact records the path and predicts anywhere), the HTTP front door's `model` fields. How a
named encoder pools and normalises, when a request does not say, comes from its
sentence-transformers files (`modules.json`, the Pooling module's `config.json`, a Normalize
module) where present, else mean pooling without normalisation.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunewire.errors import InvalidArgument

ENV = "TUNEWIRE_MODELS"  # NAME=PATH entries separated by commas
# Model keys of job configs: an encoder, an llm's base model, a few-shot retrieval encoder.
_MODEL_KEYS = ("pretrained_model_name_or_path", "base_model", "model_name")


def parse_models(values: list[str], field: str = "model") -> dict[str, str]:
    """["NAME=PATH", ...] → {NAME: PATH}, a local PATH made absolute. A name twice, an empty
    name or path, or a name with '/' (it would read as a path or Hub id) is refused."""
    names: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise InvalidArgument(f"{value!r} is not NAME=PATH", field=field)
        if "/" in name or name in (".", ".."):
            raise InvalidArgument(f"model name {name!r} may not contain '/'", field=field)
        if name in names:
            raise InvalidArgument(f"model name {name!r} given twice", field=field)
        local = Path(path).expanduser()
        names[name] = str(local.resolve()) if local.exists() else path
    return names


def add_model_flag(parser: argparse.ArgumentParser) -> None:
    """`--model NAME=PATH`, repeatable; default from TUNEWIRE_MODELS (comma-separated)."""
    env = [v for v in os.environ.get(ENV, "").split(",") if v.strip()]
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        default=None,
        metavar="NAME=PATH",
        help=f"an encoder by name: requests and job configs may say NAME for PATH (repeatable; "
        f"env {ENV}, comma-separated)",
    )
    parser.set_defaults(models_env=env)


def models_from_args(args: argparse.Namespace) -> dict[str, str]:
    values = args.models if args.models is not None else getattr(args, "models_env", [])
    return parse_models(list(values))


def rename_models(config: Any, names: Mapping[str, str]) -> Any:
    """A job config with every model key (encoder `pretrained_model_name_or_path`, `base_model`,
    `prompt.retrieval.model_name`) that is a registered NAME replaced by its PATH; a copy, the
    input untouched."""
    if isinstance(config, dict):
        return {
            k: names.get(v, v)
            if k in _MODEL_KEYS and isinstance(v, str)
            else rename_models(v, names)
            for k, v in config.items()
        }
    if isinstance(config, list):
        return [rename_models(v, names) for v in config]
    return config


@dataclass(frozen=True)
class PoolingDefaults:
    pooling: str = "mean"
    normalize: bool = False
    max_seq_length: int = 0  # 0: the model's own limit


_ST_POOLING = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_lasttoken", "last"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
)


def pooling_defaults(path: str | Path) -> PoolingDefaults:
    """The pooling, normalisation and max length a sentence-transformers model declares; mean
    pooling, no normalisation and the model's limit for anything else (or a Hub id)."""
    root = Path(path)
    try:
        modules = json.loads((root / "modules.json").read_text())
    except (OSError, ValueError):
        return PoolingDefaults()
    pooling, normalize = "mean", False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith(".Pooling"):
            try:
                cfg = json.loads((root / module.get("path", "") / "config.json").read_text())
            except (OSError, ValueError):
                cfg = {}
            pooling = next((name for key, name in _ST_POOLING if cfg.get(key)), "mean")
        elif kind.endswith(".Normalize"):
            normalize = True
    try:
        max_len = int(
            json.loads((root / "sentence_bert_config.json").read_text())["max_seq_length"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        max_len = 0
    return PoolingDefaults(pooling, normalize, max_len)
