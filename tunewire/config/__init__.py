"""The config schema in Ludwig's vocabulary, one module per model type.

`resolve(raw)` validates a user's config (a dict from YAML/JSON) and returns the typed config with
every default filled in; `to_dict(resolved)` is what a job records and an artifact carries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunewire.config.schema import ConfigError, to_dict

__all__ = ["ConfigError", "load", "resolve", "to_dict"]


def load(path: str | Path) -> dict:
    """Read a YAML or JSON config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist", field="config")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse {path.name}: {exc}", field="config") from None
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping at the top level", field="config")
    _absolutize_model_paths(data, path.parent)
    return data


_MODEL_KEYS = ("pretrained_model_name_or_path", "base_model")


def _absolutize_model_paths(node: Any, base: Path) -> None:
    """A model path written relative to the config file, and existing there, becomes absolute,
    so the config works from any directory. Hub ids (`org/name`) that are not local paths stay."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _MODEL_KEYS and isinstance(value, str) and not Path(value).is_absolute():
                candidate = base / value
                if candidate.exists():
                    node[key] = str(candidate.resolve())
            else:
                _absolutize_model_paths(value, base)
    elif isinstance(node, list):
        for item in node:
            _absolutize_model_paths(item, base)


def resolve(raw: dict) -> Any:
    """Validate and fill defaults; the model type picks the schema (ecd when absent)."""
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping", field="config")
    model_type = raw.get("model_type", "ecd")
    if model_type == "ecd":
        from tunewire.config.ecd import parse_ecd

        return parse_ecd(raw)
    if model_type == "llm":
        try:
            from tunewire.config.llm import parse_llm
        except ImportError:
            raise ConfigError("model_type llm is not built yet", field="model_type") from None
        return parse_llm(raw)
    raise ConfigError(f"{model_type!r} is not one of 'ecd', 'llm'", field="model_type")
