"""Ludwig's `preprocessing.split`: random, fixed (a split column), stratify, hash."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from tunewire.config.ecd import SplitConfig
from tunewire.errors import InvalidArgument

# Ludwig's fixed-split column values: 0/1/2 or train/validation/test.
_FIXED = {
    "0": 0,
    "1": 1,
    "2": 2,
    "train": 0,
    "training": 0,
    "validation": 1,
    "val": 1,
    "valid": 1,
    "test": 2,
}


def split(
    df: pd.DataFrame,
    cfg: SplitConfig,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return (train, validation, test); the input's row order is kept within each part."""
    n = len(df)
    if cfg.type == "fixed":
        col = cfg.column or "split"
        if col not in df.columns:
            raise InvalidArgument(
                f"split column {col!r} is not in the data set", field="preprocessing.split.column"
            )
        values = df[col].astype(str).str.strip().str.lower()
        bad = ~values.isin(list(_FIXED))
        if bad.any():
            raise InvalidArgument(
                f"split column {col!r} has value {df[col][bad].iloc[0]!r} in row "
                f"{int(np.flatnonzero(bad.to_numpy())[0])}; use 0/1/2 or train/validation/test",
                field="preprocessing.split.column",
            )
        assign = values.map(_FIXED).to_numpy()
    elif cfg.type == "random":
        rng = np.random.default_rng(seed)
        assign = _assign(rng.permutation(n), n, cfg.probabilities)
    elif cfg.type == "stratify":
        if cfg.column not in df.columns:
            raise InvalidArgument(
                f"stratify column {cfg.column!r} is not in the data set",
                field="preprocessing.split.column",
            )
        rng = np.random.default_rng(seed)
        assign = np.zeros(n, dtype=np.int64)
        for _, idx in df.groupby(df[cfg.column].astype(str), sort=True).indices.items():
            idx = np.asarray(idx)
            order = idx[rng.permutation(len(idx))]
            assign[order] = _assign(np.arange(len(idx)), len(idx), cfg.probabilities)
    elif cfg.type == "hash":
        if cfg.column not in df.columns:
            raise InvalidArgument(
                f"hash column {cfg.column!r} is not in the data set",
                field="preprocessing.split.column",
            )
        fractions = np.array(
            [
                int.from_bytes(hashlib.sha256(str(v).encode()).digest()[:8], "big") / 2**64
                for v in df[cfg.column]
            ]
        )
        edges = np.cumsum(cfg.probabilities)
        assign = np.searchsorted(edges, fractions, side="right").clip(0, 2)
    else:  # validated by the config schema
        raise InvalidArgument(
            f"split type {cfg.type!r} is not supported", field="preprocessing.split.type"
        )
    parts = tuple(df[assign == i].reset_index(drop=True) for i in range(3))
    return parts  # type: ignore[return-value]


def _assign(order: np.ndarray, n: int, probabilities: list[float]) -> np.ndarray:
    """Positions in `order` get split 0 for the first p0·n, then 1, then 2."""
    n_train = int(round(probabilities[0] * n))
    n_val = int(round(probabilities[1] * n))
    if probabilities[2] > 0 and n_train + n_val >= n and n >= 3:
        n_train = max(1, n - n_val - 1)
    assign = np.full(n, 2, dtype=np.int64)
    assign[order[:n_train]] = 0
    assign[order[n_train : n_train + n_val]] = 1
    return assign


SPLIT_NAMES = {"training": 0, "train": 0, "validation": 1, "test": 2}


def split_dataset(df: pd.DataFrame, config) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(train, validation, test) of one data set as a job with this resolved `config` makes
    them: `preprocessing.sample_ratio`/`sample_size` first, then `preprocessing.split`, both with
    the config's seed. Training and `--split` at prediction time both come here."""
    pre = getattr(config, "preprocessing", None)
    if pre is None or getattr(pre, "split", None) is None:
        raise InvalidArgument("the config has no preprocessing.split", field="split")
    if pre.sample_ratio < 1.0:
        df = df.sample(frac=pre.sample_ratio, random_state=config.seed).reset_index(drop=True)
    if getattr(pre, "sample_size", None):
        df = df.sample(n=min(pre.sample_size, len(df)), random_state=config.seed).reset_index(
            drop=True
        )
    return split(df, pre.split, config.seed)


def rows_of_split(df: pd.DataFrame, config, name: str) -> pd.DataFrame:
    """Ludwig's `--split` at prediction time: the rows of data set `df` that a job with this
    resolved `config` put in split `name` ("full" or "" for all)."""
    if name in ("", "full"):
        return df
    if name not in SPLIT_NAMES:
        raise InvalidArgument(
            f"split {name!r} is not one of full, training, validation, test", field="split"
        )
    return split_dataset(df, config)[SPLIT_NAMES[name]]
