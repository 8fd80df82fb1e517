"""Ludwig's statistics files, computed with numpy.

- test_statistics.json: `{feature: {metric: value, ...extras}}` plus `combined.loss`. For
  binary and category outputs the extras are Ludwig's: `confusion_matrix` (rows true, columns
  predicted, in `labels` order), `overall_stats` and `per_class_stats` (keyed by class name);
  binary outputs add `roc_curve` (`false_positive_rate`, `true_positive_rate`),
  `precision_recall_curve` (`precisions`, `recalls`), `average_precision_*` and — tunewire's
  addition, for the calibration plot — `calibration_curve` (`mean_predicted_value`,
  `fraction_of_positives`, ten equal-width bins).
- training_statistics.json: `{"training"|"validation"|"test": {feature: {metric: [one value per
  evaluation]}}}`.
"""

from __future__ import annotations

import math

import numpy as np

CALIBRATION_BINS = 10


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (y.astype(np.int64), pred.astype(np.int64)), 1)
    return counts


def per_class_stats(counts: np.ndarray, labels: list[str]) -> dict[str, dict]:
    total = int(counts.sum())
    out = {}
    for i, name in enumerate(labels):
        tp = int(counts[i, i])
        fp = int(counts[:, i].sum()) - tp
        fn = int(counts[i, :].sum()) - tp
        tn = total - tp - fp - fn
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out[str(name)] = {
            "true_positives": tp,
            "true_negatives": tn,
            "false_positives": fp,
            "false_negatives": fn,
            "true_positive_rate": recall,
            "true_negative_rate": _ratio(tn, tn + fp),
            "positive_predictive_value": precision,
            "negative_predictive_value": _ratio(tn, tn + fn),
            "false_positive_rate": _ratio(fp, fp + tn),
            "false_negative_rate": _ratio(fn, fn + tp),
            "false_discovery_rate": _ratio(fp, fp + tp),
            "false_omission_rate": _ratio(fn, fn + tn),
            "accuracy": _ratio(tp + tn, total),
            "precision": precision,
            "recall": recall,
            "specificity": _ratio(tn, tn + fp),
            "f1_score": _ratio(2 * precision * recall, precision + recall),
            "matthews_correlation_coefficient": _ratio(tp * tn - fp * fn, denominator),
            "support": tp + fn,
        }
    return out


def overall_stats(counts: np.ndarray, per_class: dict[str, dict]) -> dict:
    total = int(counts.sum())
    support = np.array([c["support"] for c in per_class.values()], dtype=np.float64)
    out: dict = {"token_accuracy": _ratio(np.trace(counts), total)}
    for metric, key in (("precision", "precision"), ("recall", "recall"), ("f1_score", "f1_score")):
        values = np.array([c[key] for c in per_class.values()])
        out[f"avg_{metric}_macro"] = float(values.mean()) if len(values) else 0.0
        out[f"avg_{metric}_weighted"] = _ratio(float((values * support).sum()), support.sum())
    tp = sum(c["true_positives"] for c in per_class.values())
    fp = sum(c["false_positives"] for c in per_class.values())
    fn = sum(c["false_negatives"] for c in per_class.values())
    p, r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    out["avg_precision_micro"], out["avg_recall_micro"] = p, r
    out["avg_f1_score_micro"] = _ratio(2 * p * r, p + r)
    expected = _ratio(float((counts.sum(0) * counts.sum(1)).sum()), total * total)
    out["kappa_score"] = _ratio(out["token_accuracy"] - expected, 1 - expected)
    return out


def roc_points(y: np.ndarray, p: np.ndarray) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) at every distinct score, from (0, 0)."""
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order].astype(np.float64), p[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]  # the last index of each score
    tps, fps = np.cumsum(y)[last], (last + 1) - np.cumsum(y)[last]
    pos, neg = max(y.sum(), 1.0), max(len(y) - y.sum(), 1.0)
    return np.r_[0.0, fps / neg].tolist(), np.r_[0.0, tps / pos].tolist()


def precision_recall_points(y: np.ndarray, p: np.ndarray) -> tuple[list[float], list[float]]:
    """(precisions, recalls) at every distinct score, ending at recall 0 and precision 1 as
    scikit-learn's `precision_recall_curve` (which Ludwig uses) does."""
    order = np.argsort(-p, kind="mergesort")
    y, p = y[order].astype(np.float64), p[order]
    last = np.r_[np.flatnonzero(np.diff(p)), len(p) - 1]
    tps = np.cumsum(y)[last]
    predicted = last + 1
    precision = tps / predicted
    recall = tps / max(y.sum(), 1.0)
    # From the highest threshold down to the lowest, then the (recall 0, precision 1) end.
    return np.r_[precision[::-1], 1.0].tolist(), np.r_[recall[::-1], 0.0].tolist()


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    precisions, recalls = precision_recall_points(y, p)
    pr, rc = np.array(precisions[::-1]), np.array(recalls[::-1])  # recall ascending
    return float(np.sum(np.diff(rc) * pr[1:]))


def calibration_points(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    mean_p, frac = [], []
    for b in range(bins):
        mask = which == b
        if mask.any():
            mean_p.append(float(p[mask].mean()))
            frac.append(float(y[mask].mean()))
    return {"mean_predicted_value": mean_p, "fraction_of_positives": frac}


def feature_test_statistics(
    kind: str,
    labels: list[str],
    y: np.ndarray,
    scores: np.ndarray,
    metrics: dict[str, float],
    threshold: float = 0.5,
) -> dict:
    """One output feature's entry of test_statistics.json: its metrics plus Ludwig's extras."""
    out: dict = {k: float(v) for k, v in metrics.items()}
    if kind == "binary":
        y = y.astype(np.int64).reshape(-1)
        p = np.asarray(scores, dtype=np.float64).reshape(-1)
        pred = (p >= threshold).astype(np.int64)
        counts = confusion(y, pred, 2)
        fpr, tpr = roc_points(y, p)
        precisions, recalls = precision_recall_points(y, p)
        ap = average_precision(y, p)
        out.update(
            {
                "roc_curve": {"false_positive_rate": fpr, "true_positive_rate": tpr},
                "precision_recall_curve": {"precisions": precisions, "recalls": recalls},
                "average_precision_macro": ap,
                "average_precision_micro": ap,
                "average_precision_samples": ap,
                "calibration_curve": calibration_points(y, p),
            }
        )
    elif kind == "category":
        y = y.astype(np.int64).reshape(-1)
        counts = confusion(y, np.asarray(scores).argmax(axis=1), len(labels))
    else:
        return out
    per_class = per_class_stats(counts, labels)
    out["confusion_matrix"] = counts.tolist()
    out["labels"] = [str(v) for v in labels]
    out["overall_stats"] = overall_stats(counts, per_class)
    out["per_class_stats"] = per_class
    return out


def training_statistics(evaluations: list[dict[str, dict[str, dict[str, float]]]]) -> dict:
    """Ludwig's training_statistics.json from one `{split: {feature: {metric: value}}}` per
    evaluation, in order: `{split: {feature: {metric: [values]}}}`. A metric missing from an
    evaluation is left out of that evaluation, not filled."""
    out: dict = {}
    for evaluation in evaluations:
        for split, features in evaluation.items():
            for feature, values in features.items():
                slot = out.setdefault(split, {}).setdefault(feature, {})
                for metric, value in values.items():
                    slot.setdefault(metric, []).append(float(value))
    return out
