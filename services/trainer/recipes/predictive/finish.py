"""What both predictive recipes do after the loop: calibrate, write the artifact (head, metadata,
manifest, model card), the test-split predictions, the plots, and the stock-transformers export
where the head allows it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import structlog
import torch

from services.trainer.context import JobContext, Log, MetricValue
from services.trainer.recipes.predictive import calibration as C
from services.trainer.recipes.predictive import plot_worker
from services.trainer.recipes.predictive.loop import HeadTrainer
from tunewire import heads as pm
from tunewire.config import to_dict
from tunewire.model_card import render_model_card

log = structlog.get_logger(__name__)

TASKS = {
    "binary": "text-classification",
    "category": "text-classification",
    "set": "text-classification",
    "number": "text-classification",
    "vector": "feature-extraction",
}


def calibrate(ctx: JobContext, trainer: HeadTrainer) -> dict[str, dict]:
    """Fit a temperature for every output with `calibration: true`, on the validation split
    (the training split, with a warning, when there is none: it is over-confident there)."""
    report: dict[str, dict] = {}
    wanted = [f for f in ctx.config.output_features if f.calibration]
    if not wanted:
        return report
    split = "validation" if "validation" in trainer.y else "train"
    if split == "train":
        ctx.emit(
            Log(
                "calibration: no validation split, fitting the temperature on the training "
                "split (it will be too low)"
            )
        )
    logits = trainer.logits(split)
    for f in wanted:
        head = trainer.model.outputs[f.name]
        binary = head.meta.type == "binary"
        target = trainer.y[split][f.name]
        temperature = C.fit_temperature(logits[f.name], target, binary)
        before = head.scores(logits[f.name])
        head.temperature.fill_(temperature)
        after = head.scores(logits[f.name])
        report[f.name] = {
            "split": split,
            "temperature": temperature,
            "nll_before": C.nll(logits[f.name], target, binary, 1.0),
            "nll_after": C.nll(logits[f.name], target, binary, temperature),
            "ece_before": C.expected_calibration_error(before, target.numpy()),
            "ece_after": C.expected_calibration_error(after, target.numpy()),
        }
        ctx.emit(
            Log(
                f"calibration of {f.name}: temperature {temperature:.3f}, {split} ECE "
                f"{report[f.name]['ece_before']:.4f} → {report[f.name]['ece_after']:.4f}"
            )
        )
    return report


def calibrate_and_evaluate(
    ctx: JobContext, trainer: HeadTrainer
) -> tuple[dict[str, dict], list[MetricValue], dict]:
    """Calibration first, so the reported metrics are those of the probabilities served."""
    report = calibrate(ctx, trainer)
    metrics, logits = trainer.evaluate()
    return report, metrics, logits


def metrics_tree(values: list[MetricValue]) -> dict:
    tree: dict = {}
    for m in values:
        tree.setdefault(m.split, {}).setdefault(m.feature, {})[m.name] = m.value
    return tree


def write_artifact(
    ctx: JobContext,
    trainer: HeadTrainer,
    encoders: dict[str, pm.EncoderRef],
    metrics: list[MetricValue],
    logits: dict[str, dict[str, torch.Tensor]],
    manifest_extra: dict,
    extra_files: Callable[[Path], list[str]] | None = None,
) -> list[str]:
    """Write the artifact; returns the extra files (relative to it) for the job summary.

    The PNGs are drawn by the plot worker (another process, on the other core) while this
    writes the rest, model card included; the job waits for them before it returns, so a
    finished job has them."""
    from services.trainer.recipes.predictive.plots import plan_plots
    from services.trainer.recipes.predictive.reports import write_logs, write_reports

    directory = ctx.artifact_dir
    model = trainer.model
    plots = plan_plots(directory, model, trainer, logits)
    statistics, curves = write_reports(directory, model, trainer, metrics, logits)
    drawing = plot_worker.Batch([d for _, d in plots + curves])
    first = next(iter(model.outputs.values())).meta.type
    pm.save(
        model,
        directory,
        encoders=encoders,
        config=to_dict(ctx.config),
        manifest_extra={
            "job_id": ctx.job_id,
            "task": TASKS[first],
            "metrics": metrics_tree(metrics),
            "history": trainer.history,
            "best_epoch": trainer.best_epoch,
            **manifest_extra,
        },
    )
    if "test" in logits:
        _test_predictions(model, logits["test"], ctx.work_dir / "test_predictions.csv")
    extras = [file for file, _ in plots] + statistics + [file for file, _ in curves]
    extras += write_logs(directory, trainer, metrics)
    if extra_files is not None:
        extras += extra_files(directory)
    # The card reads the manifest and the export, never the PNGs: written while they are drawn
    # (a fresh process's first card imports huggingface_hub and jinja2, ~0.2-0.4 s).
    (directory / "README.md").write_text(render_model_card(directory))
    drawing.wait()
    ctx.emit(Log(f"beside the artifact: {', '.join(extras)}"))
    return extras


def _test_predictions(
    model: pm.PredictiveModel, logits: dict[str, torch.Tensor], path: Path
) -> None:
    frame = pd.DataFrame()
    for name, head in model.outputs.items():
        preds, probs, names = head.decode(head.scores(logits[name]))
        frame[f"{name}_predictions"] = preds
        if probs is not None:
            for j, cls in enumerate(names):
                frame[f"{name}_probabilities_{cls}"] = probs[:, j]
    frame.to_csv(path, index=False)
