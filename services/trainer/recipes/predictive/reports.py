"""What users' own tools read from a predictive artifact: Ludwig's `training_statistics.json`
and `test_statistics.json` (so `ludwig visualize` and `tunewire visualize` draw them), TensorBoard
event files under `logs/` (`tensorboard --logdir`), and the ROC, precision-recall and calibration
plots of binary outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from services.trainer.context import MetricValue
from services.trainer.recipes.predictive.plot_drawing import Drawing
from services.trainer.tensorboard import LOGS_DIR, write_scalars
from tunewire import stat_plots, statistics

# Ludwig's split names in the statistics files.
SPLIT_NAMES = {"train": "training", "validation": "validation", "test": "test"}


def test_statistics(
    model, y: dict[str, torch.Tensor], logits: dict[str, torch.Tensor], values: list[MetricValue]
) -> dict:
    """test_statistics.json for one split: per output its metrics and Ludwig's extras, and
    `combined.loss`."""
    by_feature: dict[str, dict[str, float]] = {}
    for m in values:
        by_feature.setdefault(m.feature, {})[m.name] = m.value
    out: dict = {}
    for name, head in model.outputs.items():
        if name not in y:
            continue
        out[name] = statistics.feature_test_statistics(
            head.meta.type,
            list(head.meta.vocab or []),
            y[name].numpy(),
            head.scores(logits[name]),
            by_feature.get(name, {}),
            threshold=float(getattr(head.feature, "threshold", 0.5) or 0.5),
        )
    if "combined" in by_feature:
        out["combined"] = by_feature["combined"]
    return out


def training_statistics(history: list[dict], final: list[MetricValue]) -> dict:
    """One evaluation per epoch (the training loss, and the monitored split's metrics), then the
    final evaluation of the test split (one entry: it is evaluated once, after training)."""
    outputs = {f for h in history for f in h["metrics"] if f != "combined"}
    evaluations = []
    for h in history:
        training = {"combined": {"loss": h["train_loss"]}}
        if len(outputs) == 1:  # one output: its loss is the combined loss
            training[next(iter(outputs))] = {"loss": h["train_loss"]}
        evaluation = {"training": training}
        if h["split"] != "train":
            evaluation[SPLIT_NAMES[h["split"]]] = h["metrics"]
        evaluations.append(evaluation)
    stats = statistics.training_statistics(evaluations)
    test: dict = {}
    for m in final:
        if m.split == "test":
            test.setdefault(m.feature, {})[m.name] = [float(m.value)]
    if test:
        stats["test"] = test
    return stats


def write_tensorboard(directory: Path, history: list[dict], final: list[MetricValue]) -> None:
    """Event files per split under `logs/` (Ludwig's `training`/`validation`/`test`): losses
    and metrics per epoch, the learning rate and throughput under `training`."""
    scalars: dict[str, list[tuple[str, float, int]]] = {}
    for h in history:
        step = int(h.get("step", h["epoch"]))
        train = scalars.setdefault("training", [])
        train.append(("combined/loss", h["train_loss"], step))
        if "learning_rate" in h:
            train.append(("learning_rate", h["learning_rate"], step))
        if "throughput" in h:
            train.append(("throughput/examples_per_second", h["throughput"], step))
        if h["split"] != "train":
            monitored = scalars.setdefault(SPLIT_NAMES[h["split"]], [])
            for feature, values in h["metrics"].items():
                monitored += [(f"{feature}/{metric}", v, step) for metric, v in values.items()]
    last = int(history[-1].get("step", history[-1]["epoch"])) if history else 0
    scalars["test"] = [(f"{m.feature}/{m.name}", m.value, last) for m in final if m.split == "test"]
    write_scalars(directory, scalars)


def write_reports(
    directory: Path,
    model,
    trainer,
    metrics: list[MetricValue],
    logits: dict[str, dict[str, torch.Tensor]],
) -> tuple[list[str], list[tuple[str, Drawing]]]:
    """Write the statistics files; returns their paths relative to `directory`, and the curve
    plots to draw (path, drawing: see plot_worker.py)."""
    written = []
    stats = training_statistics(trainer.history, metrics)
    (directory / "training_statistics.json").write_text(json.dumps(stats, indent=2))
    written.append("training_statistics.json")
    planned: list[tuple[str, Drawing]] = []
    if "test" in logits and "test" in trainer.y:
        test = test_statistics(
            model,
            trainer.y["test"],
            logits["test"],
            [m for m in metrics if m.split == "test"],
        )
        (directory / "test_statistics.json").write_text(json.dumps(test, indent=2))
        written.append("test_statistics.json")
        planned = _curve_plots(test, directory)
    return written, planned


def write_logs(directory: Path, trainer, metrics: list[MetricValue]) -> list[str]:
    """The TensorBoard event files (`logs/`), when there is a history to log."""
    if not trainer.history:
        return []
    write_tensorboard(directory, trainer.history, metrics)
    return [f"{LOGS_DIR}/"]


def _curve_plots(test: dict, directory: Path) -> list[tuple[str, Drawing]]:
    """ROC, precision-recall and calibration curves (the confusion matrices are drawn by
    plots.py with the per-class bars)."""
    planned = []
    for feature, values in test.items():
        if not isinstance(values, dict) or "roc_curve" not in values:
            continue
        mine = [{feature: values}]
        for kind, function in (
            ("roc", "roc_curves"),
            ("precision_recall", "precision_recall_curves"),
            ("calibration", "calibration"),
        ):
            file = f"plots/{feature}_test_{kind}.png"
            args = (mine, ["test"], feature, directory / file)
            planned.append((file, Drawing(stat_plots.__name__, function, args)))
    return planned


def predict_statistics(model, y: dict[str, np.ndarray], logits, values) -> dict:
    """test_statistics for `evaluate` on a data set (labels already encoded)."""
    return test_statistics(model, {k: torch.as_tensor(v) for k, v in y.items()}, logits, values)
