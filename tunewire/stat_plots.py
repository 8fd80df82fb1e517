"""Plots drawn from Ludwig-shaped statistics files (training_statistics.json,
test_statistics.json), shared by the predictive recipe (PNGs in the artifact's `plots/`) and the
CLI's `visualize` and `evaluate`.

matplotlib's `Figure` directly, not pyplot: no global backend, nothing shared between two jobs
drawing at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def learning_curves(training_statistics: dict, path_for) -> list[Path]:
    """One figure per (output feature, metric), one line per split with that metric, x the
    evaluation (epoch) index — Ludwig's `learning_curves`."""
    written = []
    splits = [s for s in ("training", "validation", "test") if s in training_statistics]
    features = sorted({f for s in splits for f in training_statistics[s]})
    for feature in features:
        metrics = sorted({m for s in splits for m in training_statistics[s].get(feature, {})})
        for metric in metrics:
            fig = _figure(6, 4)
            ax = fig.subplots()
            drawn = False
            for split in splits:
                values = training_statistics[split].get(feature, {}).get(metric)
                if values:
                    ax.plot(range(1, len(values) + 1), values, marker="o", label=split)
                    drawn = True
            if not drawn:
                continue
            ax.set(xlabel="epoch", ylabel=metric, title=f"{feature}: {metric}")
            ax.legend()
            fig.subplots_adjust(left=0.14, right=0.97, bottom=0.13, top=0.91)
            written.append(_save(fig, path_for(f"learning_curves_{feature}_{metric}")))
    return written


def roc_curves(test_statistics: list[dict], names: list[str], feature: str, path: Path) -> Path:
    fig = _figure(5, 5)
    ax = fig.subplots()
    for stats, name in zip(test_statistics, names):
        roc = stats[feature]["roc_curve"]
        auc = stats[feature].get("roc_auc")
        label = f"{name} (AUC {auc:.3f})" if isinstance(auc, float) else name
        ax.plot(roc["false_positive_rate"], roc["true_positive_rate"], label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{feature}: ROC")
    ax.legend(loc="lower right")
    fig.subplots_adjust(left=0.15, right=0.96, bottom=0.11, top=0.93)
    return _save(fig, path)


def precision_recall_curves(
    test_statistics: list[dict], names: list[str], feature: str, path: Path
) -> Path:
    fig = _figure(5, 5)
    ax = fig.subplots()
    for stats, name in zip(test_statistics, names):
        pr = stats[feature]["precision_recall_curve"]
        ax.plot(pr["recalls"], pr["precisions"], label=name)
    ax.set(
        xlabel="recall",
        ylabel="precision",
        title=f"{feature}: precision-recall",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower left")
    fig.subplots_adjust(left=0.15, right=0.96, bottom=0.11, top=0.93)
    return _save(fig, path)


def calibration(test_statistics: list[dict], names: list[str], feature: str, path: Path) -> Path:
    """Reliability diagram: mean predicted probability against the observed frequency, per bin."""
    fig = _figure(5, 5)
    ax = fig.subplots()
    for stats, name in zip(test_statistics, names):
        cal = stats[feature]["calibration_curve"]
        ax.plot(cal["mean_predicted_value"], cal["fraction_of_positives"], marker="o", label=name)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="fraction of positives",
        title=f"{feature}: calibration",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left")
    fig.subplots_adjust(left=0.15, right=0.96, bottom=0.11, top=0.93)
    return _save(fig, path)


def confusion_matrix(stats: dict, feature: str, path: Path, labels: list[str] | None) -> Path:
    counts = np.asarray(stats[feature]["confusion_matrix"])
    labels = labels or stats[feature].get("labels") or [str(i) for i in range(len(counts))]
    fig = _figure(6, 5)
    ax = fig.subplots()
    ax.imshow(counts, cmap="Blues")
    if len(counts) <= 12:
        for (i, j), c in np.ndenumerate(counts):
            ax.text(j, i, str(c), ha="center", va="center")
    ticks = range(len(labels))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="true")
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_yticklabels(labels)
    ax.set_title(f"{feature}: confusion matrix")
    fig.tight_layout()
    return _save(fig, path)


def compare_performance(
    test_statistics: list[dict], names: list[str], feature: str, path: Path
) -> Path:
    """Bars of each model's scalar metrics for one feature (Ludwig's compare_performance)."""
    metrics = sorted(
        {
            k
            for s in test_statistics
            for k, v in s[feature].items()
            if isinstance(v, (int, float)) and k != "loss"
        }
    )
    fig = _figure(max(5, len(metrics) * 0.9), 4)
    ax = fig.subplots()
    width = 0.8 / max(len(names), 1)
    for i, (stats, name) in enumerate(zip(test_statistics, names)):
        values = [float(stats[feature].get(m, np.nan)) for m in metrics]
        ax.bar(np.arange(len(metrics)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(names) - 1) / 2)
    ax.set_xticklabels(metrics, rotation=45, ha="right")
    ax.set_title(f"{feature}: performance")
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def evaluation_plots(stats: dict, out_dir: Path, name: str = "model") -> list[Path]:
    """Every plot one test_statistics.json supports: confusion matrices, and ROC,
    precision-recall and calibration curves for binary features."""
    written = []
    for feature, values in stats.items():
        if not isinstance(values, dict) or feature == "combined":
            continue
        if "confusion_matrix" in values:
            written.append(
                confusion_matrix(stats, feature, out_dir / f"{feature}_confusion_matrix.png", None)
            )
        if "roc_curve" in values:
            written.append(roc_curves([stats], [name], feature, out_dir / f"{feature}_roc.png"))
        if "precision_recall_curve" in values:
            written.append(
                precision_recall_curves(
                    [stats], [name], feature, out_dir / f"{feature}_precision_recall.png"
                )
            )
        if "calibration_curve" in values:
            written.append(
                calibration([stats], [name], feature, out_dir / f"{feature}_calibration.png")
            )
    return written
