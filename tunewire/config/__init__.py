"""The config schema in Ludwig's vocabulary, one module per model type.

Each model type's `parse_*` validates a user's config (a dict from YAML/JSON) and returns the typed
config with every default filled in; the trainer's table of model types
(`services/trainer/model_types.py`, `resolve`) picks the parser. `to_dict(resolved)` is what a job
records and an artifact carries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tunewire.config.schema import ConfigError, to_dict

__all__ = ["ConfigError", "load", "to_dict"]


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
