"""The splits as model inputs and targets: columns checked, rows without labels dropped, the
training set metadata fitted on the training split, non-text inputs encoded, texts collected.

Both predictive recipes (frozen and adapted encoder) start here; `predict` and online serving use
`tunewire.features.encode_inputs` with the metadata stored in the artifact, so a row is encoded
the same way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tunewire.config.ecd import EcdConfig
from tunewire.errors import InvalidArgument
from tunewire.features import (
    InputMetadata,
    OutputMetadata,
    check_columns,
    encode_inputs,
    encode_output,
    fit_input,
    fit_output,
    split_texts,
)
from tunewire.heads import class_weights

SPLITS = ("train", "validation", "test")


@dataclass
class Prepared:
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    inputs: dict[str, InputMetadata] = field(default_factory=dict)  # non-text inputs
    outputs: dict[str, OutputMetadata] = field(default_factory=dict)
    # split → feature → encoded array (non-text inputs here; text vectors added by the recipe)
    x: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    texts: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    y: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def size(self, split: str) -> int:
        return len(self.frames[split])

    def release(self) -> None:
        """Drop the arrays and frames (a job's memory goes back when it ends)."""
        self.x.clear()
        self.texts.clear()
        self.frames.clear()


def input_columns(cfg: EcdConfig) -> dict[str, str]:
    return {f"input_features[{i}].column": str(f.column) for i, f in enumerate(cfg.input_features)}


def output_columns(cfg: EcdConfig) -> dict[str, str]:
    return {
        f"output_features[{i}].column": str(f.column) for i, f in enumerate(cfg.output_features)
    }


def _labelled(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Ludwig drops rows whose label is missing (any output's)."""
    keep = np.ones(len(df), dtype=bool)
    for col in columns:
        labels = df[col]
        keep &= ~(labels.isna() | (labels.astype(str).str.strip() == "")).to_numpy()
    return df[keep].reset_index(drop=True)


def one_class_splits(cfg: EcdConfig, data: Prepared) -> list[str]:
    """Warnings for binary and category outputs whose labels in a split are all one class:
    such a model learns nothing, and metrics that need two classes (roc_auc) are undefined."""
    warnings = []
    for f in cfg.output_features:
        if f.type not in ("binary", "category"):
            continue
        for split, df in data.frames.items():
            if f.column not in df.columns:
                continue
            classes = df[f.column].astype(str).str.strip().unique()
            if len(classes) == 1:
                warnings.append(
                    f"warning: every label of {f.name!r} in the {split} split is {classes[0]!r}; "
                    "the model learns one class and metrics that need two (roc_auc) are "
                    "undefined (null)"
                )
    return warnings


def prepare(cfg: EcdConfig, splits: dict[str, pd.DataFrame | None]) -> Prepared:
    data = Prepared()
    out_cols = output_columns(cfg)
    for name in SPLITS:
        df = splits.get(name)
        if df is None or len(df) == 0:
            continue
        check_columns(df, input_columns(cfg), f"{name} set")
        if name == "train" or all(c in df.columns for c in out_cols.values()):
            check_columns(df, out_cols, f"{name} set")
            df = _labelled(df, list(out_cols.values()))
        data.frames[name] = df
    if len(data.frames.get("train", [])) == 0:
        raise InvalidArgument(
            "the training split has no labelled rows", field="output_features[0].column"
        )
    train = data.frames["train"]
    for i, f in enumerate(cfg.output_features):
        data.outputs[f.name] = fit_output(train, f, f"output_features[{i}].column")
        class_weights(f, data.outputs[f.name], f"output_features[{i}]")  # refused here, by path
    for i, f in enumerate(cfg.input_features):
        if f.type != "text":
            data.inputs[f.name] = fit_input(train, f, f"input_features[{i}].column")
    for name, df in data.frames.items():
        data.x[name] = encode_inputs(cfg, data.inputs, df)
        data.texts[name] = split_texts(cfg, df)
        if all(m.column in df.columns for m in data.outputs.values()):
            data.y[name] = {
                n: encode_output(df, m, f"output_features[{i}].column")
                for i, (n, m) in enumerate(data.outputs.items())
            }
    return data
