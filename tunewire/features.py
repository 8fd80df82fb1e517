"""Turning table columns into model inputs and targets, and back.

`fit_output()`/`fit_input()` learn what Ludwig calls the training set metadata (label and category
vocabularies, mean/std for numbers, the vector size) from the training split; the artifact stores
it so `predict` encodes and decodes exactly as training did. Values that cannot be parsed are an
InvalidArgument naming the column and the first bad row.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from tunewire.config.ecd import EcdConfig, InputFeature, OutputFeature
from tunewire.errors import InvalidArgument

_TRUE = {"true", "t", "yes", "y", "1", "1.0", "on", "positive", "pos"}
_FALSE = {"false", "f", "no", "n", "0", "0.0", "off", "negative", "neg"}


@dataclass
class OutputMetadata:
    name: str
    type: str
    column: str
    # binary: [false_label, true_label]; category/set: the class names in index order.
    vocab: list[str] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0
    normalization: str | None = None
    size: int = 0  # vector: its length
    separator: str | None = None  # set/vector: None splits on whitespace

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OutputMetadata:
        return cls(**d)


def check_columns(df: pd.DataFrame, columns: dict[str, str], where: str) -> None:
    """Every configured column must exist; `columns` maps config path -> column name."""
    for path, col in columns.items():
        if col not in df.columns:
            raise InvalidArgument(
                f"column {col!r} is not in the {where} "
                f"(columns: {', '.join(map(str, df.columns))})",
                field=path,
            )


def texts(df: pd.DataFrame, column: str, *, lowercase: bool = False, fill: str = "") -> list[str]:
    values = df[column].map(
        lambda v: fill if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    )
    return [v.lower() for v in values] if lowercase else list(values)


def fit_output(df: pd.DataFrame, feature: OutputFeature, path: str) -> OutputMetadata:
    col = feature.column
    raw = df[col]
    meta = OutputMetadata(feature.name, feature.type, col)
    if feature.type == "binary":
        values = sorted({_norm(v) for v in raw})
        values = [v for v in values if v != ""]
        if feature.preprocessing.fallback_true_label is not None:
            true = str(feature.preprocessing.fallback_true_label)
            false = [v for v in values if v != true]
            if len(false) > 1 or true not in values:
                raise InvalidArgument(
                    f"binary column {col!r} has values {values[:5]}; fallback_true_label "
                    f"{true!r} must be one of two",
                    field=path,
                )
            meta.vocab = [false[0] if false else f"not {true}", true]
        elif all(v.lower() in _TRUE | _FALSE for v in values):
            meta.vocab = ["False", "True"]
        elif len(values) == 2:
            meta.vocab = values  # the second, alphabetically, is the positive class
        else:
            raise InvalidArgument(
                f"binary column {col!r} has {len(values)} distinct values "
                f"({', '.join(values[:5])}{'…' if len(values) > 5 else ''}); a binary output "
                "needs two",
                field=path,
            )
    elif feature.type == "category":
        counts = raw.map(_norm).value_counts()
        counts = counts[counts.index != ""]
        if len(counts) < 2:
            raise InvalidArgument(f"category column {col!r} needs at least two classes", field=path)
        # Most frequent first (Ludwig's order), ties by name for determinism.
        meta.vocab = sorted(counts.index, key=lambda c: (-counts[c], c))
    elif feature.type == "number":
        meta.normalization = feature.preprocessing.normalization
        _fit_scale(meta, numbers(raw, col, path))
    elif feature.type == "set":
        meta.separator = _SEPARATORS[feature.preprocessing.tokenizer]
        counts = pd.Series([t for v in raw for t in _tokens(v, meta.separator)]).value_counts()
        if len(counts) < 1:
            raise InvalidArgument(f"set column {col!r} has no labels", field=path)
        meta.vocab = sorted(counts.index, key=lambda c: (-counts[c], c))
    elif feature.type == "vector":
        meta.separator = _SEPARATORS[feature.preprocessing.tokenizer]
        meta.size = feature.vector_size or len(_tokens(raw.iloc[0], meta.separator))
        vectors(raw, meta, path)  # every row must parse to `size` numbers
    return meta


_SEPARATORS = {"space": None, "comma": ","}


def _fit_scale(meta: OutputMetadata | InputMetadata, y: np.ndarray) -> None:
    if meta.normalization == "zscore":
        meta.mean, meta.std = float(y.mean()), float(y.std() or 1.0)
    elif meta.normalization == "minmax":
        meta.mean, meta.std = float(y.min()), float((y.max() - y.min()) or 1.0)


def _tokens(v, separator: str | None) -> list[str]:
    return [t.strip() for t in _norm(v).split(separator) if t.strip()]


def encode_output(df: pd.DataFrame, meta: OutputMetadata, path: str) -> np.ndarray:
    """Targets as float32 (binary 0/1, number normalised) or int64 class indices."""
    raw = df[meta.column]
    if meta.type == "binary":
        out = np.empty(len(raw), dtype=np.float32)
        boolean = meta.vocab == ["False", "True"]
        for i, v in enumerate(raw):
            s = _norm(v)
            if boolean and s.lower() in _TRUE:
                out[i] = 1.0
            elif boolean and s.lower() in _FALSE:
                out[i] = 0.0
            elif s in meta.vocab:
                out[i] = float(meta.vocab.index(s))
            else:
                raise InvalidArgument(
                    f"row {i}: {v!r} in binary column {meta.column!r} is neither "
                    f"{meta.vocab[0]!r} nor {meta.vocab[1]!r}",
                    field=path,
                )
        return out
    if meta.type == "category":
        index = {c: i for i, c in enumerate(meta.vocab)}
        out = np.empty(len(raw), dtype=np.int64)
        for i, v in enumerate(raw):
            s = _norm(v)
            if s not in index:
                raise InvalidArgument(
                    f"row {i}: class {v!r} in column {meta.column!r} was not seen in training",
                    field=path,
                )
            out[i] = index[s]
        return out
    if meta.type == "set":
        index = {c: i for i, c in enumerate(meta.vocab)}
        out = np.zeros((len(raw), len(meta.vocab)), dtype=np.float32)
        for i, v in enumerate(raw):
            # A label unseen in training cannot be predicted; it is left out, as Ludwig's <UNK>.
            out[i, [index[t] for t in _tokens(v, meta.separator) if t in index]] = 1.0
        return out
    if meta.type == "vector":
        return vectors(raw, meta, path)
    y = numbers(raw, meta.column, path)
    return ((y - meta.mean) / meta.std).astype(np.float32)


def vectors(raw: pd.Series, meta: OutputMetadata, path: str) -> np.ndarray:
    out = np.empty((len(raw), meta.size), dtype=np.float32)
    for i, v in enumerate(raw):
        parts = _tokens(v, meta.separator)
        try:
            values = [float(t) for t in parts]
        except ValueError:
            values = []
        if len(values) != meta.size or not np.all(np.isfinite(values)):
            raise InvalidArgument(
                f"row {i}: {v!r} in vector column {meta.column!r} is not {meta.size} finite "
                "numbers",
                field=path,
            )
        out[i] = values
    return out


@dataclass
class InputMetadata:
    """What encodes one non-text input feature the same way at training and at predict time."""

    name: str
    type: str
    column: str
    vocab: list[str] = field(default_factory=list)  # category: index 0 is <UNK>
    mean: float = 0.0
    std: float = 1.0
    normalization: str | None = None
    fill: float = 0.0  # number: the value a missing cell becomes (before normalising)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> InputMetadata:
        return cls(**d)


UNK = "<UNK>"


def fit_input(df: pd.DataFrame, feature: InputFeature, path: str) -> InputMetadata:
    """Metadata of a number, binary or category input, from the training split."""
    meta = InputMetadata(feature.name, feature.type, str(feature.column))
    pre = feature.preprocessing
    raw = df[meta.column]
    if feature.type == "number":
        y = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        seen = y[np.isfinite(y)]
        if len(seen) == 0:
            raise InvalidArgument(f"number column {meta.column!r} has no numbers", field=path)
        meta.fill = (
            float(seen.mean())
            if pre.missing_value_strategy == "fill_with_mean"
            else float(pre.fill_value)
        )
        meta.normalization = pre.normalization
        _fit_scale(meta, np.where(np.isfinite(y), y, meta.fill))
    elif feature.type == "binary":
        as_output = OutputFeature(name=feature.name, type="binary", column=meta.column)
        as_output.preprocessing.fallback_true_label = pre.fallback_true_label
        present = raw.map(_norm) != ""
        meta.vocab = fit_output(df[present], as_output, path).vocab
    elif feature.type == "category":
        counts = raw.map(_norm).value_counts()
        counts = counts[counts.index != ""]
        top = sorted(counts.index, key=lambda c: (-counts[c], c))[: pre.most_common]
        meta.vocab = [UNK, *top]
    return meta


def encode_input(df: pd.DataFrame, meta: InputMetadata, path: str) -> np.ndarray:
    """number/binary: float32 [n] (normalised, 0/1); category: int64 [n] indices (0: unseen)."""
    raw = df[meta.column]
    if meta.type == "number":
        y = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        y = np.where(np.isfinite(y), y, meta.fill)
        return ((y - meta.mean) / meta.std).astype(np.float32)
    if meta.type == "binary":
        out_meta = OutputMetadata(meta.name, "binary", meta.column, vocab=meta.vocab)
        filled = raw.map(lambda v: meta.vocab[0] if _norm(v) == "" else v)
        return encode_output(filled.to_frame(meta.column), out_meta, path)
    index = {c: i for i, c in enumerate(meta.vocab)}
    return np.array([index.get(_norm(v), 0) for v in raw], dtype=np.int64)


def decode_number(values: np.ndarray, meta: OutputMetadata) -> np.ndarray:
    return values * meta.std + meta.mean


def numbers(raw: pd.Series, column: str, path: str) -> np.ndarray:
    y = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(y)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidArgument(
            f"row {i}: {raw.iloc[i]!r} in number column {column!r} is not a finite number",
            field=path,
        )
    return y


def _norm(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


def encode_inputs(
    cfg: EcdConfig, metas: dict[str, InputMetadata], df: pd.DataFrame
) -> dict[str, np.ndarray]:
    return {
        f.name: encode_input(df, metas[f.name], f"input_features[{i}].column")
        for i, f in enumerate(cfg.input_features)
        if f.type != "text"
    }


def split_texts(cfg: EcdConfig, df: pd.DataFrame) -> dict[str, list[str]]:
    return {
        f.name: texts(
            df, str(f.column), lowercase=f.preprocessing.lowercase, fill=f.preprocessing.fill_value
        )
        for f in cfg.input_features
        if f.type == "text"
    }
