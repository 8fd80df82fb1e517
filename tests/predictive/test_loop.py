"""The head's training loop, driven directly (no services): it takes the seeded batches and reports
the batch-weighted mean loss, whatever device it runs on; and a head trained on a GPU calibrates,
evaluates and writes its artifact as one trained on the CPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from services.trainer.context import JobContext
from services.trainer.recipes.predictive import model as pm
from services.trainer.recipes.predictive.data import prepare
from services.trainer.recipes.predictive.finish import calibrate_and_evaluate, write_artifact
from services.trainer.recipes.predictive.loop import HeadTrainer
from services.trainer.recipes.predictive.recipe import build_model
from tunewire.config import resolve, to_dict

EPOCHS, BATCH = 3, 16


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["red", "green", "blue"], size=n)
    y = np.where(a + b > 0.5, "high", np.where(a + b < -0.5, "low", "mid"))
    z = np.where(a - b > 0, "yes", "no")
    return pd.DataFrame({"a": a, "b": b, "c": c, "y": y, "z": z})


def job(tmp_path, device: torch.device, seed: int = 0
        ) -> tuple[JobContext, HeadTrainer]:
    raw = to_dict(resolve({
        "input_features": [{"name": "a", "type": "number"}, {"name": "b", "type": "number"},
                           {"name": "c", "type": "category"}],
        "output_features": [{"name": "y", "type": "category", "calibration": True},
                            {"name": "z", "type": "binary"}],
        "trainer": {"epochs": EPOCHS, "batch_size": BATCH, "learning_rate": 0.01,
                    "early_stop": -1, "eval_batch_size": 32}}))
    cfg = resolve(raw)
    splits = {"train": frame(100, 1), "validation": frame(30, 2), "test": frame(30, 3)}
    ctx = JobContext("job-loop", cfg, raw, tmp_path / "work", tmp_path / "artifact",
                     splits["train"], splits["validation"], splits["test"], emit=lambda ev: None)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    data = prepare(cfg, splits)
    torch.manual_seed(seed)
    model = build_model(cfg, data, {})
    return ctx, HeadTrainer(ctx, model, data, device=device)


def reference_epoch_losses(trainer: HeadTrainer, seed: int) -> list[float]:
    """The loop as it was before the device path: numpy gathers and one .item() a step, on a
    fresh copy of the model and a plain (unfused) Adam."""
    import copy

    model = copy.deepcopy(trainer.model).cpu().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y, n = trainer.data.x["train"], trainer.data.y["train"], trainer.data.size("train")
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(EPOCHS):
        order, seen, running = torch.randperm(n, generator=gen), 0, 0.0
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH].numpy()
            out = model({k: torch.from_numpy(v[idx]) for k, v in x.items()})
            loss, _ = model.loss(out, {k: torch.from_numpy(v[idx]) for k, v in y.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(idx)
            running += loss.item() * len(idx)
        losses.append(running / seen)
    return losses


def test_the_loop_takes_the_seeded_batches_and_reports_their_weighted_mean_loss(tmp_path):
    _, trainer = job(tmp_path, torch.device("cpu"))
    expected = reference_epoch_losses(trainer, seed=7)
    trainer.train(7)
    assert [h["epoch"] for h in trainer.history] == [1, 2, 3]
    assert [h["train_loss"] for h in trainer.history] == pytest.approx(expected, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_head_trained_on_the_gpu_evaluates_and_saves_as_on_the_cpu(tmp_path):
    results = {}
    for device in ("cpu", "cuda"):
        ctx, trainer = job(tmp_path / device, torch.device(device))
        trainer.train(7)
        assert next(trainer.model.parameters()).device.type == device
        report, metrics, logits = calibrate_and_evaluate(ctx, trainer)
        assert all(t.device.type == "cpu" for per in logits.values() for t in per.values())
        write_artifact(ctx, trainer, {}, metrics, logits, {"calibration": report})
        assert pm.load(ctx.artifact_dir).model.outputs["y"].temperature.device.type == "cpu"
        results[device] = ([h["train_loss"] for h in trainer.history],
                           {(m.split, m.feature, m.name): m.value for m in metrics})
        trainer.release()
    (cpu_losses, cpu_metrics), (gpu_losses, gpu_metrics) = results["cpu"], results["cuda"]
    assert gpu_losses == pytest.approx(cpu_losses, rel=1e-3)
    assert gpu_metrics[("test", "y", "accuracy")] == pytest.approx(
        cpu_metrics[("test", "y", "accuracy")], abs=0.07)
