"""Typed config parsing with key paths.

Config sections are plain dataclasses whose fields carry `metadata={"help": ...}`; `parse()` walks
a JSON-like dict into them, refusing unknown keys with their full path (`trainer.optimzer`), and
turns a `ValueError` from a section's `__post_init__` into a `ConfigError` at that section's path.
`to_dict()` writes every field back, defaults included, which is what a job records.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin

from tunewire.errors import InvalidArgument


class ConfigError(InvalidArgument):
    """A config problem; `field` is the dotted key path (`output_features[0].type`)."""

    reason = "INVALID_CONFIG"


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def parse(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from `data`, validating types and keys."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", field=path or None)
    precheck = getattr(cls, "precheck", None)
    if precheck is not None:
        try:
            precheck(data)
        except ValueError as exc:
            field = getattr(exc, "field", None)
            raise ConfigError(
                str(exc), field=join(path, field) if field else (path or None)
            ) from None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        allowed = ", ".join(sorted(fields))
        raise ConfigError(f"unknown key (allowed here: {allowed})", field=join(path, unknown[0]))
    kwargs = {
        name: _convert(hints[name], data[name], join(path, name)) for name in fields if name in data
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        field = getattr(exc, "field", None)
        raise ConfigError(str(exc), field=join(path, field) if field else (path or None)) from None


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in get_args(tp):
                return None
            raise ConfigError("must not be null", field=path)
        errors = []
        for arg in args:
            try:
                return _convert(arg, value, path)
            except ConfigError as exc:
                errors.append(exc)
        raise (
            errors[-1]
            if len(errors) == 1
            else ConfigError(f"{value!r} is not allowed here: expected {_describe(tp)}", field=path)
        )
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{value!r} is not one of {', '.join(map(repr, choices))}", field=path
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {type(value).__name__}", field=path)
        (item,) = get_args(tp)[:1] or (Any,)
        return [_convert(item, v, join(path, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {type(value).__name__}", field=path)
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", field=path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"expected an integer, got {value!r}", field=path)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", field=path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", field=path)
        return value
    return value


_KINDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    type(None): "null",
}


def _describe(tp: Any) -> str:
    """What a type accepts, in words: `an integer or 'auto'`, `'l1', 'l2' or null`."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in get_args(tp) if a is not type(None)]
        if type(None) in get_args(tp):
            parts.append("null")
    elif origin is Literal:
        parts = [repr(c) for c in get_args(tp)]
    elif origin in (list, tuple):
        return "a list"
    elif origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    else:
        return _KINDS.get(tp, getattr(tp, "__name__", str(tp)))
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def to_dict(obj: Any) -> Any:
    """Every field, defaults included, as plain JSON-able values."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type, data: dict) -> Any:
    """The exact inverse of `to_dict` for a config that was validated already (a job's resolved
    config, written at admission): rebuilds `cls` field by field without running `__post_init__`,
    so nothing is checked or defaulted a second time. Every field must be there and nothing else
    (a dict that `to_dict` did not write is refused: parse that with `parse`). A field typed `Any`
    whose value is a section names its dataclass in `metadata={"one_of": pick}`, where
    `pick(value, parent)` gets the section's dict and its parent's."""
    if not isinstance(data, dict):
        raise TypeError(f"a resolved {cls.__name__} is a mapping, not {type(data).__name__}")
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    missing = [f.name for f in fields if f.name not in data]
    unknown = [k for k in data if k not in names]
    if missing or unknown:
        raise TypeError(
            f"not a resolved {cls.__name__}: missing {missing}, unknown {unknown} "
            "(to_dict writes every field)"
        )
    hints = typing.get_type_hints(cls)
    obj = object.__new__(cls)
    for f in fields:
        value = data[f.name]
        pick = f.metadata.get("one_of")
        if pick is not None and isinstance(value, dict):
            value = from_dict(pick(value, data), value)
        else:
            value = _rebuild(hints[f.name], value)
        object.__setattr__(obj, f.name, value)
    return obj


def _rebuild(tp: Any, value: Any) -> Any:
    """One resolved value back to what its type hint holds (dataclasses rebuilt, lists of them
    too); plain values are copied as they are."""
    if value is None:
        return None
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        sections = [a for a in args if dataclasses.is_dataclass(a)]
        lists = [a for a in args if get_origin(a) in (list, tuple)]
        if isinstance(value, dict) and len(sections) == 1:
            return from_dict(sections[0], value)
        if isinstance(value, list) and len(lists) == 1:
            return _rebuild(lists[0], value)
        if sections and isinstance(value, dict):
            raise TypeError(f"{tp} is a union of sections: name the one with metadata one_of")
        return to_dict(value)
    if origin in (list, tuple):
        (item,) = get_args(tp)[:1] or (Any,)
        items = [_rebuild(item, v) for v in value]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    return to_dict(value)


# Bounds on sizes a config can ask for: far beyond any real model of these kinds, far below
# what would exhaust a server (a head 1e11 units wide was "internal error: RuntimeError").
MAX_LAYER_WIDTH = 1 << 16
MAX_FC_LAYERS = 64
MAX_LORA_RANK = 4096
# Passes and optimizer steps of one job (Ludwig's default is 100 epochs); the runner also
# bounds a job's events (services/trainer), whatever these allow.
MAX_EPOCHS = 10_000
MAX_TRAIN_STEPS = 10_000_000


def check_range(value: int, low: int, high: int, field: str) -> None:
    """`value` in [low, high], else the ValueError `check` raises."""
    check(low <= value <= high, f"must be between {low} and {high}", field)


def check(condition: bool, message: str, field: str | None = None) -> None:
    """Raise a ValueError that `parse` reports at `<section path>.<field>`."""
    if not condition:
        exc = ValueError(message)
        exc.field = field  # type: ignore[attr-defined]
        raise exc
