"""What people look at: PNGs beside the artifact (`plots/`). Learning curves from the recorded
history; per output on the test split (validation when there is none): a confusion matrix and
per-class precision/recall/F1 for binary and category, predicted against true for number (and
vector components).

Figures are made with matplotlib's `Figure` directly, not pyplot: no global backend to switch, no
figure registry to close, and nothing shared between two jobs drawing at once (PNGs render with
Agg, no display needed). Text layout is most of a figure's cost, and `tight_layout` lays every
label out twice (once to measure, once to draw): the learning curves and the scatter plot have
fixed labels and take fixed margins instead; the confusion figure, whose class names can be any
length, keeps `tight_layout`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.trainer.recipes.predictive import metrics as M
from services.trainer.recipes.predictive.plot_drawing import Drawing

if TYPE_CHECKING:
    import torch

PLOTS_DIR = "plots"
# Counts are written in the confusion matrix's cells up to this many classes: beyond it they are
# too small to read, and each is a text to lay out (400 of them took 0.6 s at 20 classes).
ANNOTATED_CLASSES = 12


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def learning_curves(path: Path, history: list[dict]) -> None:
    epochs = [h["epoch"] for h in history]
    outputs = [k for k in history[0]["metrics"] if k != "combined"]
    fig = _figure(5 * (1 + len(outputs)), 4)
    axes = fig.subplots(1, 1 + len(outputs), squeeze=False)
    ax = axes[0, 0]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    ax.plot(
        epochs,
        [h["metrics"]["combined"]["loss"] for h in history],
        marker="o",
        label=f"{history[0]['split']} loss",
    )
    ax.set(xlabel="epoch", ylabel="loss", title="loss")
    ax.legend()
    for ax, name in zip(axes[0, 1:], outputs):
        for metric in sorted(history[0]["metrics"][name]):
            if metric != "loss":
                ax.plot(epochs, [h["metrics"][name][metric] for h in history], label=metric)
        ax.set(xlabel="epoch", title=f"{name} ({history[0]['split']})")
        ax.legend(fontsize="small")
    # Margins in inches (tick labels, axis labels, titles), whatever the number of panels.
    width = fig.get_figwidth()
    fig.subplots_adjust(
        left=0.6 / width, right=1 - 0.15 / width, bottom=0.13, top=0.92, wspace=0.25
    )
    fig.savefig(path, dpi=90)


def confusion(path: Path, name: str, vocab: list[str], y: np.ndarray, pred: np.ndarray) -> None:
    counts = M.confusion_matrix(y, pred, len(vocab))
    scores = M.per_class(counts)
    fig = _figure(12, 5)
    left, right = fig.subplots(1, 2)
    image = left.imshow(counts, cmap="Blues")
    if len(vocab) <= ANNOTATED_CLASSES:
        for (i, j), c in np.ndenumerate(counts):
            left.text(
                j,
                i,
                str(c),
                ha="center",
                va="center",
                color="white" if c > counts.max() / 2 else "black",
            )
    else:  # a colour scale says what the shades count instead
        fig.colorbar(image, ax=left, fraction=0.046, pad=0.04)
    ticks = range(len(vocab))
    left.set(
        xticks=ticks,
        yticks=ticks,
        xlabel="predicted",
        ylabel="true",
        title=f"{name}: confusion matrix",
    )
    left.set_xticklabels(vocab, rotation=45, ha="right")
    left.set_yticklabels(vocab)
    width = 0.27
    for k, metric in enumerate(("precision", "recall", "f1")):
        right.bar(np.arange(len(vocab)) + (k - 1) * width, scores[metric], width, label=metric)
    right.set_xticks(list(ticks))
    right.set_xticklabels(
        [f"{v}\n(n={int(s)})" for v, s in zip(vocab, scores["support"])], rotation=45, ha="right"
    )
    right.set(ylim=(0, 1), title=f"{name}: per-class metrics")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def scatter(path: Path, name: str, y: np.ndarray, pred: np.ndarray) -> None:
    fig = _figure(5, 5)
    ax = fig.subplots()
    ax.scatter(y.reshape(-1), pred.reshape(-1), s=6, alpha=0.5)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", label="predicted = true")
    ax.set(xlabel="true", ylabel="predicted", title=f"{name}: predicted vs true")
    ax.legend()
    fig.subplots_adjust(left=0.16, right=0.96, bottom=0.11, top=0.93)
    fig.savefig(path, dpi=90)


def plan_plots(
    directory: Path, model, trainer, logits: dict[str, dict[str, torch.Tensor]]
) -> list[tuple[str, Drawing]]:
    """Every plot that fits the outputs, as (path relative to `directory`, drawing): drawn by
    the plot worker (`plot_worker.py`) from plain data, or here."""
    from tunewire.features import decode_number

    out = directory / PLOTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    planned: list[tuple[str, Drawing]] = []
    here = __name__
    if trainer.history:
        planned.append(
            (
                f"{PLOTS_DIR}/learning_curves.png",
                Drawing(here, "learning_curves", (out / "learning_curves.png", trainer.history)),
            )
        )
    split = next((s for s in ("test", "validation") if s in trainer.y and s in logits), None)
    if split is None:
        return planned
    for name, head in model.outputs.items():
        meta, y = head.meta, trainer.y[split][name].numpy()
        scores = head.scores(logits[split][name])
        file = f"{PLOTS_DIR}/{name}_{split}_"
        if meta.type == "category":
            file += "confusion_matrix.png"
            args = (directory / file, name, list(meta.vocab), y, scores.argmax(axis=1))
            planned.append((file, Drawing(here, "confusion", args)))
        elif meta.type == "binary":
            file += "confusion_matrix.png"
            pred = (scores >= head.feature.threshold).astype(np.int64)
            args = (directory / file, name, list(meta.vocab), y, pred)
            planned.append((file, Drawing(here, "confusion", args)))
        elif meta.type in ("number", "vector"):
            file += "predicted_vs_true.png"
            true = decode_number(y.astype(np.float64), meta)
            planned.append((file, Drawing(here, "scatter", (directory / file, name, true, scores))))
    return planned
