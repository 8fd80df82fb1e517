"""Evaluation metrics for predictive outputs, in numpy (exact, no extra dependency).

binary: accuracy, precision, recall, f1, roc_auc (rank-based, ties averaged);
category: accuracy, macro_f1, hits_at_k; number: mse, mae, r2 (names as Ludwig reports them:
mean_squared_error, mean_absolute_error, r2); set: jaccard, f1 (micro), precision, recall, and
exact-match accuracy; vector: mse, mae, r2 over all components. Confusion matrices and per-class
scores feed the plots.
"""

from __future__ import annotations

import numpy as np


def binary_metrics(
    y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5
) -> dict[str, float]:
    y = y_true.astype(bool)
    pred = prob >= threshold
    tp = float(np.sum(pred & y))
    fp = float(np.sum(pred & ~y))
    fn = float(np.sum(~pred & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": float(np.mean(pred == y)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": roc_auc(y, prob),
    }


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos · n_neg); NaN when only one class is present."""
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    i = 0
    while i < len(score):  # average ranks over ties
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def category_metrics(y_true: np.ndarray, prob: np.ndarray, top_k: int = 3) -> dict[str, float]:
    pred = prob.argmax(axis=1)
    n_classes = prob.shape[1]
    f1s = []
    for c in range(n_classes):
        tp = np.sum((pred == c) & (y_true == c))
        fp = np.sum((pred == c) & (y_true != c))
        fn = np.sum((pred != c) & (y_true == c))
        if tp + fp + fn == 0:
            continue  # class absent from both: not counted (as scikit-learn's labels=present)
        f1s.append(2 * tp / (2 * tp + fp + fn))
    k = min(top_k, n_classes)
    topk = np.argsort(-prob, axis=1)[:, :k]
    return {
        "accuracy": float(np.mean(pred == y_true)),
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "hits_at_k": float(np.mean(np.any(topk == y_true[:, None], axis=1))),
    }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(counts, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return counts


def per_class(counts: np.ndarray) -> dict[str, np.ndarray]:
    """precision, recall, f1 and support per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(counts).astype(np.float64)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def set_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Multi-label: y_true and prob are [n, classes]; a row with neither true nor predicted
    labels has Jaccard 1 (both empty sets agree)."""
    y = y_true.astype(bool)
    pred = prob >= threshold
    inter = (y & pred).sum(axis=1)
    union = (y | pred).sum(axis=1)
    jaccard = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    tp, fp, fn = float(inter.sum()), float((pred & ~y).sum()), float((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {
        "jaccard": float(jaccard.mean()),
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "accuracy": float(np.mean(np.all(y == pred, axis=1))),
    }


def number_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Regression metrics; for vectors ([n, d]) every component counts as one value."""
    y_true, y_pred = y_true.reshape(-1), y_pred.reshape(-1)
    err = y_pred - y_true
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "mean_squared_error": float(np.mean(err**2)),
        "mean_absolute_error": float(np.mean(np.abs(err))),
        "root_mean_squared_error": float(np.sqrt(np.mean(err**2))),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
    }


# Which direction is better, for early stopping on `validation_metric`.
HIGHER_IS_BETTER = {
    "accuracy",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "macro_f1",
    "hits_at_k",
    "r2",
    "jaccard",
}


def improves(metric: str, new: float, best: float | None) -> bool:
    if best is None or np.isnan(best):
        return not np.isnan(new)
    return new > best if metric in HIGHER_IS_BETTER else new < best


def output_metrics(head, scores: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """One output head's metrics on the original scale (`head`: a tunewire.heads.OutputHead);
    `targets` as encoded by tunewire.features.encode_output."""
    kind, feature = head.meta.type, head.feature
    if kind == "binary":
        return binary_metrics(targets, scores, feature.threshold)
    if kind == "category":
        return category_metrics(targets, scores, feature.top_k)
    if kind == "set":
        return set_metrics(targets, scores, feature.threshold)
    if kind == "vector":
        return number_metrics(targets.astype(np.float64), scores)
    from tunewire.features import decode_number

    return number_metrics(decode_number(targets.astype(np.float64), head.meta), scores)
