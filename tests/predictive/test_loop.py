"""The head's training loop, driven directly (no services): it takes the seeded batches and reports
the batch-weighted mean loss, whatever device it runs on; it follows the learning-rate schedule;
the warm-up steps before a CUDA graph's capture leave no trace; a head trained on a GPU calibrates,
evaluates and writes its artifact as one trained on the CPU; and the graphed step trains exactly
as the eager one (GPU tests, skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from services.trainer.context import JobContext, Metrics
from services.trainer.model_types import resolve
from services.trainer.recipes.predictive.data import prepare
from services.trainer.recipes.predictive.finish import calibrate_and_evaluate, write_artifact
from services.trainer.recipes.predictive.graphed import Rewind
from services.trainer.recipes.predictive.loop import HeadTrainer, MicroBatch
from services.trainer.recipes.predictive.recipe import build_model
from tunewire import heads as pm
from tunewire.config import to_dict

EPOCHS, BATCH = 3, 16  # 100 training rows: six batches of 16 and a last one of 4
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Every kind of layer and loss term the head can hold (batch and layer norm, class weights, the
# focal loss, L1+L2 regularization, clipping, AdamW with decay, AMSGrad) under a schedule.
HEADS = {
    "batch-norm, focal, clipped, cosine": {
        "combiner": {"num_fc_layers": 1, "output_size": 32},
        "output_features": [
            {
                "name": "y",
                "type": "category",
                "calibration": True,
                "loss": {"class_weights": {"high": 2.0}},
                "decoder": {"num_fc_layers": 1, "fc_output_size": 16, "fc_norm": "batch"},
            },
            {"name": "z", "type": "binary", "loss": {"type": "focal", "weight": 0.5}},
        ],
        "trainer": {
            "gradient_clipping": {"clipglobalnorm": 0.5},
            "regularization_type": "l1_l2",
            "regularization_lambda": 1e-4,
            "optimizer": {"type": "adamw", "weight_decay": 0.01},
            "learning_rate_scheduler": {"decay": "cosine", "warmup_fraction": 0.2},
        },
    },
    "layer-norm, amsgrad, linear": {
        "output_features": [
            {
                "name": "y",
                "type": "category",
                "decoder": {"num_fc_layers": 2, "fc_output_size": 16, "fc_norm": "layer"},
            },
            {"name": "z", "type": "binary", "loss": {"positive_class_weight": 3.0}},
        ],
        "trainer": {
            "optimizer": {"type": "adam", "amsgrad": True},
            "learning_rate_scheduler": {"decay": "linear"},
        },
    },
}


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    c = rng.choice(["red", "green", "blue"], size=n)
    y = np.where(a + b > 0.5, "high", np.where(a + b < -0.5, "low", "mid"))
    z = np.where(a - b > 0, "yes", "no")
    return pd.DataFrame({"a": a, "b": b, "c": c, "y": y, "z": z})


TEXT_INPUT = {
    "name": "t",
    "type": "text",
    "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": "m"},
}


def job(
    tmp_path,
    device: torch.device,
    seed: int = 0,
    head: dict | None = None,
    cuda_graph: bool = True,
    text: bool = False,
) -> tuple[JobContext, HeadTrainer]:
    """The three-split job on `frame`s; `head` replaces the outputs and combiner and adds to
    the trainer section. `text`: one text feature instead, its vectors (a, b and noise, as
    cached vectors would come) set where the recipe puts the embedder's."""
    head = head or {}
    inputs = [
        {"name": "a", "type": "number"},
        {"name": "b", "type": "number"},
        {"name": "c", "type": "category"},
    ]
    cfg = resolve(
        {
            "input_features": [{**TEXT_INPUT, "column": "c"}] if text else inputs,
            "output_features": head.get(
                "output_features",
                [
                    {"name": "y", "type": "category", "calibration": True},
                    {"name": "z", "type": "binary"},
                ],
            ),
            **({"combiner": head["combiner"]} if "combiner" in head else {}),
            "trainer": {
                "epochs": EPOCHS,
                "batch_size": BATCH,
                "learning_rate": 0.01,
                "early_stop": -1,
                "eval_batch_size": 32,
                **head.get("trainer", {}),
            },
        }
    )
    raw = to_dict(cfg)
    splits = {"train": frame(100, 1), "validation": frame(30, 2), "test": frame(30, 3)}
    ctx = JobContext(
        "job-loop",
        cfg,
        raw,
        tmp_path / "work",
        tmp_path / "artifact",
        splits["train"],
        splits["validation"],
        splits["test"],
        emit=lambda ev: None,
    )
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    data = prepare(cfg, splits)
    refs = pm.encoder_refs(cfg)
    if text:
        rng = np.random.default_rng(seed)
        for split, df in data.frames.items():
            noise = rng.normal(size=(len(df), 14))
            vectors = np.column_stack([df["a"], df["b"], noise]).astype(np.float32)
            data.x[split]["t"] = vectors
        refs["t"].dimension = 16
    torch.manual_seed(seed)
    model = build_model(cfg, data, refs)
    return ctx, HeadTrainer(ctx, model, data, device=device, cuda_graph=cuda_graph)


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
            idx = order[start : start + BATCH].numpy()
            out = model({k: torch.from_numpy(v[idx]) for k, v in x.items()})
            loss, _ = model.loss(out, {k: torch.from_numpy(v[idx]) for k, v in y.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # Ludwig's default clipping
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


def plain_fused_training(trainer: HeadTrainer, seed: int) -> tuple[list[float], list[dict]]:
    """The loop spelled the plain way, on a copy of the model: a gather per batch, torch.optim's
    fused Adam, torch's own clip_grad_norm_, `loss.double() * rows` summed a step. Returns the
    epochs' mean losses and the weights after each epoch."""
    import copy

    model = copy.deepcopy(trainer.model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    split, n = trainer.splits["train"], trainer.data.size("train")
    gen = torch.Generator().manual_seed(seed)
    losses, states = [], []
    for _ in range(EPOCHS):
        order, total = torch.randperm(n, generator=gen), torch.zeros((), dtype=torch.float64)
        for start in range(0, n, BATCH):
            idx = order[start : start + BATCH]
            x = {k: v.index_select(0, idx) for k, v in split.x.items()}
            loss, _ = model.loss(model(x), {k: v.index_select(0, idx) for k, v in split.y.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            optimizer.step()
            total += loss.detach().double() * len(idx)
        losses.append(float(total) / n)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    return losses, states


@pytest.mark.parametrize("text", [False, True], ids=["through autograd", "autograd-free step"])
def test_the_loop_trains_bit_for_bit_as_the_plain_eager_loop(tmp_path, text):
    """What makes the loop's step cheap on a CPU (the epoch's rows gathered once, the loss
    summed in one kernel, the fused kernels and the clipping called directly, Adam's step
    counts in one tensor, a plain MLP head's step without autograd) changes no bit: the same
    losses and weights, dropout included."""
    head = {"combiner": {"num_fc_layers": 1, "output_size": 32, "dropout": 0.3}}
    if text:  # a head the autograd-free step takes: one text input, one output
        head["output_features"] = [
            {"name": "z", "type": "binary", "decoder": {"num_fc_layers": 1, "fc_dropout": 0.1}}
        ]
    _, trainer = job(tmp_path, torch.device("cpu"), head=head, text=text)
    assert (trainer.mlp_step is not None) == text, trainer.autograd_reason
    torch.manual_seed(3)
    expected_losses, states = plain_fused_training(trainer, seed=7)
    torch.manual_seed(3)
    trainer.train(7)
    assert [h["train_loss"] for h in trainer.history] == expected_losses
    best = states[trainer.best_epoch - 1]
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, best[name]), name


def test_the_learning_rate_follows_the_schedule_step_by_step(tmp_path):
    _, trainer = job(
        tmp_path,
        torch.device("cpu"),
        head={"trainer": {"learning_rate_scheduler": {"decay": "linear", "warmup_fraction": 0.25}}},
    )
    seen: list[float] = []
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.train(7)
    total = 7 * EPOCHS  # ceil(100 / 16) steps an epoch
    warmup = int(0.25 * total)
    assert len(seen) == total
    assert seen[:warmup] == pytest.approx([0.01 * (k + 1) / warmup for k in range(warmup)])
    assert seen[warmup:] == pytest.approx(
        [0.01 * (1 - (k - warmup) / (total - warmup)) for k in range(warmup, total)]
    )


def test_warm_up_steps_rewound_before_capture_leave_no_trace(tmp_path):
    """What a CUDA graph's capture needs first (real steps on real batches) is undone: weights,
    batch-norm statistics, Adam's moments and step, the loss sum and the dropout RNG."""
    head = {
        **HEADS["batch-norm, focal, clipped, cosine"],
        "combiner": {"num_fc_layers": 1, "output_size": 32, "dropout": 0.3},
    }
    cpu = torch.device("cpu")
    _, plain = job(tmp_path / "plain", cpu, head=head)
    _, warmed = job(tmp_path / "warmed", cpu, head=head)
    rng = torch.get_rng_state()
    plain.train(7)
    torch.set_rng_state(rng)
    rewind = Rewind(warmed.model, warmed.optimizer, warmed.loss_sum)
    for _ in range(3):
        warmed._train_step([MicroBatch(None, torch.arange(BATCH), BATCH)], warmed.loss_sum)
    assert warmed.optimizer.state and float(warmed.loss_sum) > 0
    rewind.restore()
    warmed.train(7)
    assert [h["train_loss"] for h in warmed.history] == pytest.approx(
        [h["train_loss"] for h in plain.history], rel=1e-6
    )
    for (name, a), b in zip(plain.model.state_dict().items(), warmed.model.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)


def test_the_step_runs_eagerly_on_the_cpu_and_says_why(tmp_path):
    _, trainer = job(tmp_path, torch.device("cpu"))
    trainer.train(7)
    assert trainer.graphed is None
    assert trainer.eager_reason == "the head trains on the cpu"


@needs_cuda
@pytest.mark.parametrize("name", sorted(HEADS))
def test_the_graphed_step_trains_as_the_eager_step(tmp_path, name):
    """Same seed, same batches (a last one of 4 rows, run eagerly beside the graph), the same
    schedule: the same per-epoch losses and the same weights, up to float rounding."""
    runs = {}
    for graphed in (False, True):
        _, trainer = job(
            tmp_path / str(graphed), torch.device("cuda"), head=HEADS[name], cuda_graph=graphed
        )
        trainer.train(7)
        assert (trainer.graphed is not None) == graphed, trainer.eager_reason
        runs[graphed] = (
            [h["train_loss"] for h in trainer.history],
            {k: v.cpu() for k, v in trainer.model.state_dict().items()},
        )
        trainer.release()
    (eager_losses, eager_state), (graph_losses, graph_state) = runs[False], runs[True]
    assert graph_losses == pytest.approx(eager_losses, rel=1e-5)
    for key, value in eager_state.items():
        torch.testing.assert_close(graph_state[key], value, rtol=1e-4, atol=1e-5, msg=key)


@needs_cuda
def test_dropout_trains_under_the_graph_and_repeats_with_the_seed(tmp_path):
    """The graph's dropout masks come from torch's graph-safe RNG: not the eager path's masks,
    but the same ones again for the same seed."""
    head = {"combiner": {"num_fc_layers": 1, "output_size": 32, "dropout": 0.3}}
    losses = []
    for run in range(2):
        _, trainer = job(tmp_path / str(run), torch.device("cuda"), head=head)
        trainer.train(7)
        assert trainer.graphed is not None, trainer.eager_reason
        losses.append([h["train_loss"] for h in trainer.history])
        trainer.release()
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert losses[0][-1] < losses[0][0]


@needs_cuda
def test_sgd_runs_eagerly_on_the_gpu_and_says_why(tmp_path):
    _, trainer = job(
        tmp_path,
        torch.device("cuda"),
        head={"trainer": {"optimizer": {"type": "sgd", "momentum": 0.9}}},
    )
    trainer.train(7)
    assert trainer.graphed is None
    assert "sgd" in trainer.eager_reason


@needs_cuda
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
        results[device] = (
            [h["train_loss"] for h in trainer.history],
            {(m.split, m.feature, m.name): m.value for m in metrics},
        )
        trainer.release()
    (cpu_losses, cpu_metrics), (gpu_losses, gpu_metrics) = results["cpu"], results["cuda"]
    assert gpu_losses == pytest.approx(cpu_losses, rel=1e-3)
    assert gpu_metrics[("test", "y", "accuracy")] == pytest.approx(
        cpu_metrics[("test", "y", "accuracy")], abs=0.07
    )


@pytest.mark.parametrize("on", [True, False])
def test_evaluate_training_set_reports_train_metrics_each_epoch(tmp_path, on):
    ctx, trainer = job(
        tmp_path, torch.device("cpu"), head={"trainer": {"evaluate_training_set": on}}
    )
    seen: list = []
    ctx.emit = seen.append
    trainer.train(7)
    events = [{m.split for m in e.metrics} for e in seen if isinstance(e, Metrics)]
    assert sum(s == {"train"} for s in events) == (EPOCHS if on else 0)
    assert sum(s == {"validation"} for s in events) == EPOCHS


def test_gradient_accumulation_steps_the_optimizer_once_per_effective_batch(tmp_path):
    """batch_size 4 × gradient_accumulation_steps 4 makes the same optimizer steps as
    batch_size 16: one per 16 rows (7 an epoch's 100 rows: six of 16 and the 4 left), the
    gradient of the mean loss over those rows, so the two train to the same weights."""
    cpu = torch.device("cpu")
    _, whole = job(tmp_path / "whole", cpu)
    _, accumulated = job(
        tmp_path / "accum", cpu, head={"trainer": {"batch_size": 4, "effective_batch_size": 16}}
    )
    t = accumulated.cfg.trainer
    assert (t.batch_size, t.gradient_accumulation_steps) == (4, 4)
    steps = []
    step = accumulated.optimizer.step
    accumulated.optimizer.step = lambda *a, **k: (steps.append(1), step(*a, **k))[1]
    whole.train(seed=5)
    accumulated.train(seed=5)
    assert len(steps) == 7 * EPOCHS
    assert [h["step"] for h in accumulated.history] == [7, 14, 21]
    losses = [h["train_loss"] for h in accumulated.history]
    assert losses[-1] < losses[0]
    assert losses == pytest.approx([h["train_loss"] for h in whole.history], rel=1e-5)
    for (name, a), (_, b) in zip(
        accumulated.model.state_dict().items(), whole.model.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), name
