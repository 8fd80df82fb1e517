"""The training loop both predictive recipes run: explicit epochs of shuffled mini-batches, the
summed weighted loss of every output, gradient clipping, early stopping on
`trainer.validation_field`/`validation_metric`, the best weights kept, then evaluation.

What differs between the recipes is only which inputs are computed per batch (`batch_inputs`:
texts run through the adapted encoder; none when every text vector comes from the cache) and
which parameters train. The fixed inputs and the targets sit where the head trains (`batches`),
so on a GPU a step is a gather and a handful of kernels; the losses stay there too, and the loop
waits for the device once an epoch, not once a step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import structlog
import torch
from torch import nn

from services.trainer.clipping import clip_gradients
from services.trainer.context import JobContext, Log, Metrics, MetricValue, Progress
from services.trainer.fused_optimizer import build_fused_optimizer
from services.trainer.optimizer import build_optimizer
from services.trainer.recipes.predictive.batches import place
from services.trainer.recipes.predictive.data import SPLITS, Prepared
from services.trainer.recipes.predictive.graphed import GraphedStep
from services.trainer.recipes.predictive.metrics import improves, output_metrics
from services.trainer.recipes.predictive.mlp_step import MlpStep
from services.trainer.schedule import lr_factor, scheduled
from tunewire.config.ecd import EcdConfig
from tunewire.cpu_threads import intra_op_threads
from tunewire.devices import default_device
from tunewire.errors import InvalidArgument
from tunewire.heads import PredictiveModel, logits_in_batches

log = structlog.get_logger(__name__)

# (split, row indices, training?) -> the inputs computed per batch for those rows (any device)
BatchInputs = Callable[[str, np.ndarray, bool], dict[str, torch.Tensor]]


class MicroBatch(NamedTuple):
    """One micro-batch of a training step."""

    rows: torch.Tensor | None  # on the CPU; needed only when an encoder runs per batch
    placed: torch.Tensor  # the same rows, where the split's fixed tensors live
    size: int
    # Its fixed inputs and targets on the training device, when already gathered (a slice of
    # the epoch's gather); else they are taken from `placed`.
    taken: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None


# A head on the CPU whose step is at most this large (trainable parameters × batch rows, about
# its multiply-adds) trains on one intra-op thread: its operations are too small to split, and
# a team of OpenMP threads meets at a barrier after each one. The SMS spam head (49k parameters,
# batch 64) took 1.1 ms a step on one thread and 21-30 ms on two on a shared 2-core VM.
SMALL_HEAD_STEP = 1 << 24


def head_threads(
    device: torch.device, params: int, batch: int, encoder_per_batch: bool
) -> int | None:
    """Intra-op threads for the head's training and evaluation: one for a small head on the
    CPU, else None (torch's own count; an encoder run per batch is large work)."""
    if device.type != "cpu" or encoder_per_batch or params * batch > SMALL_HEAD_STEP:
        return None
    return 1


class HeadTrainer:
    """Trains `model` (and whatever else `extra` holds, e.g. a LoRA-wrapped encoder) on `device`
    (a GPU when there is one). The inputs in `data.x` are fixed and placed there once;
    `batch_inputs` gives the others per batch. The model stays on `device`; `logits()` and `y`
    are on the CPU, for calibration, plots and the artifact."""

    def __init__(
        self,
        ctx: JobContext,
        model: PredictiveModel,
        data: Prepared,
        batch_inputs: BatchInputs | None = None,
        extra: nn.Module | None = None,
        eval_batch_size: int | None = None,
        device: torch.device | None = None,
        cuda_graph: bool = True,
    ) -> None:
        """`cuda_graph=False` keeps every step eager on a GPU too: the escape hatch, and the
        reference the graphed path is tested against."""
        self.ctx = ctx
        self.cfg: EcdConfig = ctx.config
        self.device = device or default_device()
        self.model = model.to(self.device)
        self.data = data
        self.batch_inputs = batch_inputs
        self.extra = extra
        self.eval_batch_size = eval_batch_size or int(self.cfg.trainer.eval_batch_size)
        self.params = [p for p in model.parameters() if p.requires_grad]
        if extra is not None:
            self.params += [p for p in extra.parameters() if p.requires_grad]
        self.splits = place(data.x, data.y, self.device)
        tcfg = self.cfg.trainer
        self.clipping = tcfg.gradient_clipping
        self.regularized = bool(tcfg.regularization_lambda and tcfg.regularization_type)
        self.eager_reason = self._eager_reason() if cuda_graph else "turned off"
        graphed = self.eager_reason is None
        # A captured step reads a scheduled rate from the device; a constant one is baked in.
        lr = (
            torch.tensor(float(tcfg.learning_rate), device=self.device)
            if graphed and scheduled(tcfg.learning_rate_scheduler)
            else float(tcfg.learning_rate)
        )
        # Eager steps call torch's fused kernels directly (no torch._dynamo import, less Python
        # a step); a captured step needs torch.optim's capturable Adam.
        self.optimizer = (
            build_optimizer(tcfg.optimizer, self.params, lr, capturable=True)
            if graphed
            else build_fused_optimizer(tcfg.optimizer, self.params, lr)
        )
        self.graphed: GraphedStep | None = None  # captured when training starts
        # A plain MLP head on the CPU steps without autograd's engine (the same bits).
        self.mlp_step, self.autograd_reason = self._mlp_step()
        # Σ loss × rows of an epoch, on the device: read once an epoch, not once a step.
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.y = {
            split: {k: torch.from_numpy(v) for k, v in ys.items()} for split, ys in data.y.items()
        }
        self.history: list[dict] = []
        self.best_epoch: int | None = None
        self.intra_op_threads = head_threads(
            self.device,
            sum(p.numel() for p in self.params),
            int(tcfg.batch_size),
            batch_inputs is not None,
        )

    def cpu_threads(self):
        """Where training and evaluation run: with `head_threads`' count, restored after."""
        return intra_op_threads(self.intra_op_threads)

    # -------------------------------------------------------------------------------- train
    def train(self, seed: int) -> None:
        tcfg = self.cfg.trainer
        n = self.data.size("train")
        batch = int(tcfg.batch_size)
        # Ludwig's gradient accumulation: `accum` micro-batches of `batch` rows make one optimizer
        # step (effective_batch_size); steps, the schedule and train_steps count optimizer steps.
        accum = int(tcfg.gradient_accumulation_steps)
        total = math.ceil(math.ceil(n / batch) / accum) * tcfg.epochs
        if tcfg.train_steps:
            total = min(total, tcfg.train_steps)
        monitor = "validation" if "validation" in self.y else "train"
        field_name, metric = tcfg.validation_field, tcfg.validation_metric or "loss"
        best, best_state, stale, step = None, None, 0, 0
        peak_lr = float(tcfg.learning_rate)
        lr_at = (
            lr_factor(tcfg.learning_rate_scheduler, peak_lr, total)
            if scheduled(tcfg.learning_rate_scheduler)
            else None
        )
        graphed = self._graph(batch)
        loss_sum = self.loss_sum
        # The shuffle comes from a CPU generator, as it always has: the same seed gives the same
        # batches on any device.
        gen = torch.Generator().manual_seed(seed)
        for epoch in range(1, tcfg.epochs + 1):
            self._set_mode(train=True)
            order = torch.randperm(n, generator=gen) if tcfg.should_shuffle else torch.arange(n)
            started = time.monotonic()
            loss_sum.zero_()
            seen = 0
            batches = self._batches("train", order, batch, gather=graphed is None)
            for micro in self._steps(batches, accum):
                self.ctx.check_cancelled()
                if lr_at is not None:
                    self._set_lr(peak_lr * lr_at(step))
                if graphed is not None and micro[0].size == batch:
                    graphed(micro[0].placed)
                else:  # no graph, or the epoch's last, smaller batch
                    self._train_step(micro, loss_sum)
                step += 1
                seen += sum(m.size for m in micro)
                if step >= total:
                    break
            # The epoch's one wait for the device; its time belongs to the epoch's throughput.
            train_loss = float(loss_sum) / max(seen, 1)
            throughput = seen / max(time.monotonic() - started, 1e-9)
            self.ctx.emit(
                Progress(
                    "training",
                    epoch=epoch,
                    step=step,
                    total_steps=total,
                    loss=train_loss,
                    throughput=throughput,
                )
            )
            values = self.split_metrics(monitor)
            if tcfg.evaluate_training_set and monitor != "train":
                # Ludwig's evaluate_training_set: the training split's metrics every epoch too.
                self.ctx.emit(
                    Metrics(
                        [
                            MetricValue("train", f, k, v)
                            for f, vs in self.split_metrics("train").items()
                            for k, v in vs.items()
                        ]
                    )
                )
            self.history.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "train_loss": train_loss,
                    "split": monitor,
                    "metrics": values,
                    "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
                    "throughput": throughput,
                }
            )
            self.ctx.emit(
                Metrics(
                    [
                        MetricValue(monitor, f, k, v)
                        for f, vs in values.items()
                        for k, v in vs.items()
                    ]
                )
            )
            watched = values[field_name]
            if metric not in watched:
                raise InvalidArgument(
                    f"validation_metric {metric!r} is not computed for output {field_name!r} "
                    f"(available: {', '.join(sorted(watched))})",
                    field="trainer.validation_metric",
                )
            if improves(metric, watched[metric], best):
                best, stale, self.best_epoch = watched[metric], 0, epoch
                best_state = self._snapshot()
            else:
                stale += 1
                if tcfg.early_stop >= 0 and stale > tcfg.early_stop:
                    self.ctx.emit(
                        Log(
                            f"early stop at epoch {epoch}: {monitor} {field_name} "
                            f"{metric} has not improved for {stale} epochs "
                            f"(best {best:.4f})"
                        )
                    )
                    break
            if step >= total:
                break
        if best_state is not None:
            self._restore(best_state)
        self._set_mode(train=False)

    @staticmethod
    def _steps(batches: Iterator, accum: int) -> Iterator[list]:
        """Micro-batches grouped `accum` to an optimizer step; an epoch's last step takes the
        micro-batches left (Ludwig drops their gradients at the next epoch's start)."""
        group: list = []
        for item in batches:
            group.append(item)
            if len(group) == accum:
                yield group
                group = []
        if group:
            yield group

    def _train_step(self, micro: list[MicroBatch], loss_sum: torch.Tensor) -> None:
        """One optimizer step over the micro-batches `micro`, adding loss × rows to `loss_sum`.
        The gradient is that of the mean loss over all their rows. Run eagerly, or once under
        capture as the graphed step (one micro-batch), so it never waits for the device."""
        # Before the forward, not after: under capture the gradients are then the graph's own.
        self.optimizer.zero_grad(set_to_none=True)
        rows_in_step = sum(m.size for m in micro)
        for m in micro:
            if m.taken is not None:
                x, y = m.taken
            else:
                x, y = self._inputs("train", m.rows, m.placed, train=True)
            if self.mlp_step is not None and len(micro) == 1:
                loss = self.mlp_step(x, y)  # the gradients set, as backward() would
                loss_sum.add_(loss, alpha=m.size)
                break
            loss, _ = self.model.loss(self.model(x), y)
            if self.regularized:
                loss = loss + self._regularization()
            share = m.size / rows_in_step
            (loss * share if share != 1 else loss).backward()
            # Σ loss × rows in float64, one kernel (the float32 loss times at most 2^29 rows is
            # exact in float64, so this is the sum `loss_sum += loss.double() * rows` made).
            loss_sum.add_(loss.detach(), alpha=m.size)
        clip_gradients(self.params, self.clipping)
        self.optimizer.step()

    def _mlp_step(self) -> tuple[MlpStep | None, str]:
        """The autograd-free step where it fits (`mlp_step.py`), or None and why not."""
        if self.device.type != "cpu":
            return None, f"the head trains on the {self.device.type}"
        if self.extra is not None or self.batch_inputs is not None:
            return None, "an encoder trains with the head"
        if self.regularized:
            return None, "regularization adds to the loss"
        if int(self.cfg.trainer.gradient_accumulation_steps) > 1:
            return None, "a step accumulates several micro-batches"
        return MlpStep.plan(self.model)

    def _eager_reason(self) -> str | None:
        """Why the training step cannot be captured as a CUDA graph here; None when it can."""
        if self.device.type != "cuda":
            return f"the head trains on the {self.device.type}"
        if self.batch_inputs is not None:
            return "an encoder runs on every batch"
        if self.splits["train"].home != self.device:
            return "the inputs stay in host memory"
        if int(self.cfg.trainer.gradient_accumulation_steps) > 1:
            return "a step accumulates several micro-batches (gradient_accumulation_steps)"
        optimizer = self.cfg.trainer.optimizer.type
        if optimizer not in ("adam", "adamw"):
            return f"optimizer {optimizer} has no capturable step here (adam and adamw do)"
        if self.data.size("train") < int(self.cfg.trainer.batch_size):
            return "the training set is smaller than one batch"
        return None

    def _graph(self, batch: int) -> GraphedStep | None:
        """The captured step for full batches, or None (logged, with why) to run eagerly."""
        if self.graphed is not None:
            return self.graphed
        if self.eager_reason is not None:
            log.info(
                "training step runs eagerly",
                job_id=self.ctx.job_id,
                reason=self.eager_reason,
                autograd="not used" if self.mlp_step is not None else self.autograd_reason,
            )
            if self.device.type == "cuda":
                self.ctx.emit(
                    Log(f"the training step runs eagerly, not as a CUDA graph: {self.eager_reason}")
                )
            return None
        self._set_mode(train=True)
        started = time.monotonic()
        self.graphed = GraphedStep(
            lambda placed, acc: self._train_step([MicroBatch(None, placed, batch)], acc),
            batch,
            self.model,
            self.optimizer,
            self.loss_sum,
        )
        log.info(
            "training step captured as a CUDA graph",
            job_id=self.ctx.job_id,
            batch=batch,
            seconds=round(time.monotonic() - started, 3),
        )
        return self.graphed

    def _set_lr(self, value: float) -> None:
        """A tensor rate (what a captured step reads) is updated in place, on the device."""
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(value)
            else:
                group["lr"] = value

    def _batches(
        self, split: str, order: torch.Tensor, size: int, gather: bool = True
    ) -> Iterator[MicroBatch]:
        """`order` (CPU) in micro-batches of `size` rows. The order crosses to the device once,
        not once a batch. With `gather`, when every input is fixed and kept on the training
        device, the whole epoch's rows are gathered there at once (one index_select per tensor,
        the same values) and each batch is a slice of them: ~20 us less a step on a CPU."""
        tensors = self.splits[split]
        placed = order.to(tensors.home)
        n = len(order)
        taken = None
        if gather and self.batch_inputs is None and tensors.home == self.device:
            taken = tensors.take(placed)
        for start in range(0, n, size):
            end = min(start + size, n)
            batch = None
            if taken is not None:
                x, y = taken
                batch = (
                    {k: v[start:end] for k, v in x.items()},
                    {k: v[start:end] for k, v in y.items()},
                )
            yield MicroBatch(order[start:end], placed[start:end], end - start, batch)

    def _inputs(
        self, split: str, rows: torch.Tensor | None, placed: torch.Tensor, train: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The model's inputs and the targets of `rows`, on the training device."""
        x, y = self.splits[split].take(placed)
        if self.batch_inputs is not None:
            assert rows is not None
            computed = self.batch_inputs(split, rows.numpy(), train)
            x |= {k: v.to(self.device) for k, v in computed.items()}
        return x, y

    def release(self) -> None:
        """Drop the placed tensors (a job's device memory goes back when it ends)."""
        self.splits.clear()
        self.graphed = None

    def _set_mode(self, train: bool) -> None:
        for module in (self.model, self.extra):
            if module is not None:
                module.train(train)

    def _snapshot(self) -> dict[str, torch.Tensor]:
        """The head whole, and of `extra` only what trains (a frozen base is never copied)."""
        state = {f"model.{k}": v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.extra is not None:
            state |= {
                f"extra.{k}": p.detach().clone()
                for k, p in self.extra.named_parameters()
                if p.requires_grad
            }
        return state

    def _restore(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
        if self.extra is not None:
            extra = {k[6:]: v for k, v in state.items() if k.startswith("extra.")}
            missing = set(extra) - set(dict(self.extra.named_parameters()))
            assert not missing, missing
            self.extra.load_state_dict(extra, strict=False)

    def _regularization(self) -> torch.Tensor:
        """λ · (L1 and/or L2 of the weights); called only when both are configured."""
        lam = self.cfg.trainer.regularization_lambda
        kind = self.cfg.trainer.regularization_type
        weights = [p for name, p in self.model.named_parameters() if name.endswith("weight")]
        l1 = sum(p.abs().sum() for p in weights) if "l1" in kind else 0.0
        l2 = sum((p**2).sum() for p in weights) if "l2" in kind else 0.0
        return lam * (l1 + l2)

    # ----------------------------------------------------------------------------- evaluate
    def _device_logits(self, split: str) -> dict[str, torch.Tensor]:
        """The model over every row of `split`, `eval_batch_size` rows at a time, on the device."""
        self._set_mode(train=False)
        home = self.splits[split].home

        def inputs(idx: np.ndarray) -> dict[str, torch.Tensor]:
            rows = torch.from_numpy(idx)
            return self._inputs(split, rows, rows.to(home), train=False)[0]

        return logits_in_batches(self.model, inputs, self.data.size(split), self.eval_batch_size)

    def logits(self, split: str) -> dict[str, torch.Tensor]:
        """Every row's logits, on the CPU."""
        return {k: v.cpu() for k, v in self._device_logits(split).items()}

    def split_metrics(
        self, split: str, logits: dict[str, torch.Tensor] | None = None
    ) -> dict[str, dict[str, float]]:
        """feature → metrics (with its loss), plus "combined" → {loss: Σ weight · loss};
        `logits` on the training device (computed here when not given)."""
        logits = logits if logits is not None else self._device_logits(split)
        y = self.y[split]
        with torch.no_grad():
            total, losses = self.model.loss(
                logits, {k: v.to(self.device) for k, v in self.splits[split].y.items()}
            )
        values: dict[str, dict[str, float]] = {}
        for name, head in self.model.outputs.items():
            values[name] = output_metrics(head, head.scores(logits[name].cpu()), y[name].numpy())
            values[name]["loss"] = float(losses[name])
        values["combined"] = {"loss": float(total)}
        return values

    def evaluate(self) -> tuple[list[MetricValue], dict[str, dict[str, torch.Tensor]]]:
        """Metrics of every labelled split, and the logits of every split (for the artifact)."""
        values: list[MetricValue] = []
        all_logits: dict[str, dict[str, torch.Tensor]] = {}
        for split in SPLITS:
            if split not in self.data.frames:
                continue
            n = self.data.size(split)
            self.ctx.emit(Progress(f"evaluating {split}", step=n, total_steps=n))
            logits = self._device_logits(split)
            all_logits[split] = {k: v.cpu() for k, v in logits.items()}
            if split in self.y:
                for feature, metrics in self.split_metrics(split, logits).items():
                    values += [MetricValue(split, feature, k, float(v)) for k, v in metrics.items()]
        self.ctx.emit(Metrics(values))
        return values, all_logits
