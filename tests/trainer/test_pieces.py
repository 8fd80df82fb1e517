"""Splits, label encoding and metrics: checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.trainer.recipes.predictive import metrics as M
from services.trainer.splits import split
from tunewire.config.ecd import OutputFeature, SplitConfig
from tunewire.config.schema import parse
from tunewire.errors import InvalidArgument
from tunewire.features import encode_output, fit_output


def test_random_split_fractions_and_determinism():
    df = pd.DataFrame({"x": range(1000)})
    cfg = parse(SplitConfig, {"probabilities": [0.8, 0.1, 0.1]})
    a = split(df, cfg, 7)
    b = split(df, cfg, 7)
    assert [len(p) for p in a] == [800, 100, 100]
    assert all(x.equals(y) for x, y in zip(a, b))
    assert sorted(pd.concat(a)["x"]) == list(range(1000))


def test_stratify_keeps_class_ratio():
    df = pd.DataFrame({"y": ["a"] * 900 + ["b"] * 100})
    tr, va, te = split(df, parse(SplitConfig, {"type": "stratify", "column": "y"}), 0)
    for part in (tr, va, te):
        assert abs((part["y"] == "b").mean() - 0.1) < 0.02


def test_fixed_split_and_bad_values():
    df = pd.DataFrame({"x": range(4), "split": ["0", "train", "validation", "2"]})
    tr, va, te = split(df, parse(SplitConfig, {"type": "fixed", "column": "split"}), 0)
    assert [len(tr), len(va), len(te)] == [2, 1, 1]
    df.loc[3, "split"] = "holdout"
    with pytest.raises(InvalidArgument) as info:
        split(df, parse(SplitConfig, {"type": "fixed", "column": "split"}), 0)
    assert "holdout" in str(info.value)


def feature(**kw):
    return parse(OutputFeature, {"name": "y", **kw})


def test_binary_labels():
    df = pd.DataFrame({"y": ["ham", "spam", "ham"]})
    meta = fit_output(df, feature(type="binary"), "p")
    assert meta.vocab == ["ham", "spam"]
    assert encode_output(df, meta, "p").tolist() == [0.0, 1.0, 0.0]
    df2 = pd.DataFrame({"y": ["yes", "No", "1"]})
    meta2 = fit_output(df2, feature(type="binary"), "p")
    assert encode_output(df2, meta2, "p").tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(InvalidArgument) as info:
        fit_output(pd.DataFrame({"y": ["a", "b", "c"]}), feature(type="binary"), "p")
    assert "3 distinct values" in str(info.value)


def test_number_labels_refuse_nan_and_text():
    with pytest.raises(InvalidArgument) as info:
        fit_output(pd.DataFrame({"y": ["1.5", "nan", "2"]}), feature(type="number"), "p")
    assert "row 1" in str(info.value)
    with pytest.raises(InvalidArgument):
        fit_output(pd.DataFrame({"y": ["1.5", "inf"]}), feature(type="number"), "p")
    meta = fit_output(pd.DataFrame({"y": ["1", "3"]}), feature(type="number"), "p")
    assert (meta.mean, meta.std) == (2.0, 1.0)


def test_category_unseen_class_is_named():
    meta = fit_output(pd.DataFrame({"y": ["a", "b", "a"]}), feature(type="category"), "p")
    assert meta.vocab == ["a", "b"]
    with pytest.raises(InvalidArgument) as info:
        encode_output(pd.DataFrame({"y": ["c"]}), meta, "p")
    assert "'c'" in str(info.value)


def test_metrics_against_hand_computation():
    y = np.array([1, 0, 1, 1, 0])
    p = np.array([0.9, 0.4, 0.35, 0.8, 0.1])
    m = M.binary_metrics(y, p)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(1.0)
    assert m["recall"] == pytest.approx(2 / 3)
    # Pairs (pos, neg): 0.9>0.4,0.9>0.1, 0.35<0.4, 0.35>0.1, 0.8>0.4, 0.8>0.1 → 5/6.
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert M.roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
    c = M.category_metrics(np.array([0, 1, 1, 2]), prob)
    assert c["accuracy"] == pytest.approx(0.5)
    # F1 per class: c0 2·1/(2+1+0)=2/3, c1 2/(2+0+1)=2/3, c2 0 → macro 4/9.
    assert c["macro_f1"] == pytest.approx(4 / 9)
    r = M.number_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert r["mean_squared_error"] == pytest.approx(1 / 3)
    assert r["r2"] == pytest.approx(0.5)
