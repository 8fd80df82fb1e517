"""The generative fine-tuning recipe: one class, torchtune's life
(`setup` → `train` → `save_checkpoint` → `save_artifact` → `cleanup`).

It runs inside a torchrun worker (one process per GPU; `worker.py` starts it). The loop is spelled
out: micro-batches summed into one optimizer step (loss normalised by the global number of target
tokens, so packing, accumulation and world size do not change the gradient), clipping, optimizer and
scheduler steps, evaluation with early stopping and the best weights kept, periodic checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist

from services.trainer.clipping import clip_gradients
from services.trainer.optimizer import build_optimizer
from services.trainer.recipes.generative import (
    adalora,
    adapters,
    artifacts,
    calibration,
    checkpoint,
    graphs,
    optimizers,
)
from services.trainer.recipes.generative.data import (
    IGNORE,
    Batch,
    BatchPlan,
    build_samples,
    collate_packed,
    collate_padded,
    pack_rows,
    render_prompt,
    to_device,
)
from services.trainer.recipes.generative.events import EventWriter, keeps
from services.trainer.recipes.generative.model import (
    CausalLMWithLoss,
    PreconditionError,
    core_model,
    load_model,
    load_tokenizer,
    parallelize,
)
from services.trainer.schedule import lr_factor
from tunewire.config.llm import LlmConfig
from tunewire.devices import compute_dtype

N_DECODED_SAMPLES = 3


def _blocks_eager(method: Callable) -> Callable:
    """Under trainer.compile_mode: reduce-overhead, evaluation and generation run the compiled
    blocks eagerly: their shapes change every call, and each would record a CUDA graph."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with graphs.eagerly() if self.graphs else contextlib.nullcontext():
            return method(self, *args, **kwargs)

    return run


class StepTotals:
    """[loss sum, target tokens, real tokens] of a queued step, copied to pinned host memory behind
    it; `read` waits for that step alone, not for whatever was queued after it."""

    def __init__(self, values: torch.Tensor) -> None:
        self._event = None
        if values.is_cuda:
            self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = values

    def read(self) -> tuple[float, int, int]:
        if self._event is not None:
            self._event.synchronize()
        loss_sum, targets, real = self._host.tolist()
        return loss_sum / max(1.0, targets), int(targets), int(real)


@dataclass
class _PendingStep:
    step: int
    epoch: int
    lr: float
    totals: StepTotals


@dataclass
class WorkerJob:
    """What the launcher hands the worker (files under the job directory)."""

    job_id: str
    job_dir: Path
    artifact_dir: Path
    attempt: int
    cfg: LlmConfig
    config_dict: dict

    @property
    def checkpoints(self) -> Path:
        return self.job_dir / "checkpoints"

    @property
    def best(self) -> Path:
        return self.job_dir / "best" / "model.pt"

    def split(self, name: str) -> pd.DataFrame | None:
        path = self.job_dir / "inputs" / f"{name}.parquet"
        return pd.read_parquet(path) if path.exists() else None


class GenerativeRecipe:
    def __init__(self, job: WorkerJob, events: EventWriter, device: torch.device) -> None:
        self.job, self.cfg, self.events, self.device = job, job.cfg, events, device
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.best_metric: float | None = None
        self.best_step = 0
        self.evals_without_improvement = 0
        self.losses: list[tuple[int, float]] = []
        self.final_metrics: list[dict] = []
        # trainer.compile_mode: reduce-overhead (graphs.py), set from the data in setup.
        self.graphs = self.keep_grads = False

    # ---- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        seed = self.cfg.trainer.seed if self.cfg.trainer.seed is not None else self.cfg.seed
        torch.manual_seed(seed + self.rank)
        self.tokenizer = load_tokenizer(self.cfg.base_model)
        self._setup_data(seed)
        self._setup_model()
        self._setup_optimizer()
        self._setup_scheduler()
        self._maybe_resume()
        # A gradient allocated inside a graph's memory is overwritten by the next micro-batch.
        self.keep_grads = self.graphs and self.accum > 1
        if self.keep_grads:
            graphs.keep_gradient_buffers(p for p in self.model.parameters() if p.requires_grad)

    def _setup_data(self, seed: int) -> None:
        from transformers import AutoConfig

        model_max = getattr(
            AutoConfig.from_pretrained(self.cfg.base_model), "max_position_embeddings", 2048
        )
        try:
            self.samples = {
                name: build_samples(self.cfg, df, self.tokenizer, model_max)
                for name in ("train", "validation", "test")
                if (df := self.job.split(name)) is not None and len(df)
            }
        except ValueError as exc:
            raise PreconditionError(str(exc)) from None
        if not self.samples.get("train"):
            raise PreconditionError("the training split has no usable rows")
        self.row_len = max(len(s.input_ids) for split in self.samples.values() for s in split)
        self.packed = self.cfg.preprocessing.sequence_packing
        t = self.cfg.trainer
        self.plan = BatchPlan(
            self.samples["train"],
            batch_size=t.batch_size,
            row_len=self.row_len,
            packed=self.packed,
            pad_id=self.tokenizer.pad_token_id,
            world=self.world,
            rank=self.rank,
            shuffle=t.should_shuffle,
            seed=seed,
        )
        self.accum = t.gradient_accumulation_steps
        first = self.plan.epoch(0)
        micro = len(first)
        if micro == 0:
            raise PreconditionError(f"too few training samples for {self.world} workers")
        # CUDA graphs need steps of one shape: refused here, before the model loads.
        self.graphs = t.compile and t.compile_mode == graphs.MODE
        if self.graphs:
            graphs.check_one_shape(first, self.device)
        self.steps_per_epoch = math.ceil(micro / self.accum)
        self.total_steps = t.train_steps or t.epochs * self.steps_per_epoch

    def _setup_model(self) -> None:
        lm = load_model(
            self.cfg,
            self.device,
            packed=self.packed,
            total_steps=self.total_steps,
            calibration=self._calibration_batches,
        )
        # CorDA's initial adapter, which its artifact is saved against (before any training or
        # a resumed checkpoint moves it).
        self.corda_initial = adapters.corda_initial(lm)
        if self.cfg.trainer.precision == "fp8":
            from services.trainer.recipes.generative import fp8

            self.events.log(fp8.describe(lm))
        frozen = optimizers.freeze_matching(lm, self.cfg.trainer.layers_to_freeze_regex)
        if frozen:
            self.events.log(f"trainer.layers_to_freeze_regex froze {frozen} parameter tensors")
        self.lm = lm
        dist = self.cfg.backend.trainer
        self.model = parallelize(
            CausalLMWithLoss(lm),
            dist.strategy,
            self.device,
            self.world,
            reshard_after_forward=dist.reshard_after_forward,
        )
        self.fsdp = self.world > 1 and self.cfg.backend.trainer.strategy == "fsdp"
        self.adalora = adalora.is_adalora(lm)

    def _calibration_batches(self) -> list[dict]:
        """The training data an initialisation that reads data takes (EVA: this rank's share;
        CorDA: the same rows on every rank)."""
        adapter = self.cfg.adapter
        if adapter.init_lora_weights == "corda":
            return calibration.corda_batches(self.samples["train"], device=self.device)
        return calibration.eva_batches(
            self.samples["train"][self.rank :: self.world],
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
            components=math.ceil(adapter.r * adapter.eva_config.rho),
            targets_only=adapter.eva_config.use_label_mask,
        )

    def _setup_optimizer(self) -> None:
        o = self.cfg.trainer.optimizer
        params = [p for p in self.model.parameters() if p.requires_grad]
        if o.type in optimizers.BITSANDBYTES:  # paged / 8-bit, for quantized bases on a GPU
            self.optimizer = optimizers.bitsandbytes_optimizer(
                o, params, self.cfg.trainer.learning_rate, self.device
            )
            return
        self.optimizer = build_optimizer(
            o, params, self.cfg.trainer.learning_rate, fused=self.device.type == "cuda"
        )

    def _setup_scheduler(self) -> None:
        factor = lr_factor(
            self.cfg.trainer.learning_rate_scheduler,
            self.cfg.trainer.learning_rate,
            self.total_steps,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _maybe_resume(self) -> None:
        last = checkpoint.latest(self.job.checkpoints)
        if last is None:
            if self.job.attempt > 1:
                self.events.log(f"attempt {self.job.attempt}: no checkpoint yet, starting over")
            return
        state = checkpoint.load(last, self.model, self.optimizer, self.rank)
        self.scheduler.load_state_dict(state["scheduler"])
        for key in (
            "step",
            "epoch",
            "step_in_epoch",
            "best_metric",
            "best_step",
            "evals_without_improvement",
            "losses",
        ):
            setattr(self, key, state[key])
        self.events.log(f"resumed from checkpoint at step {self.step} (attempt {self.job.attempt})")

    # ---- training ----------------------------------------------------------------------------

    def train(self) -> None:
        t = self.cfg.trainer
        self.model.train()
        stop = self.step >= self.total_steps
        while not stop:
            batches = self.plan.epoch(self.epoch)
            pending: _PendingStep | None = None
            for i in range(self.step_in_epoch, self.steps_per_epoch):
                if pending is None:
                    self._clock = time.perf_counter()
                totals = self._train_step(batches[i * self.accum : (i + 1) * self.accum])
                # The previous step is read only now, with this one queued behind it: the host
                # never waits for an idle GPU, and the GPU never waits for the host's logging.
                if pending is not None:
                    self._report(pending)
                self.step += 1
                self.step_in_epoch = i + 1
                pending = _PendingStep(
                    self.step, self.epoch + 1, self.scheduler.get_last_lr()[0], totals
                )
                end_of_epoch = self.step_in_epoch == self.steps_per_epoch
                evaluate = bool(t.eval_steps and self.step % t.eval_steps == 0) or (
                    end_of_epoch and not t.eval_steps
                )
                checkpoint_due = self._checkpoint_due(end_of_epoch)
                if evaluate or checkpoint_due or end_of_epoch or self.step >= self.total_steps:
                    self._report(pending)
                    pending = None
                if evaluate:
                    stop = self._evaluate_and_track()
                if checkpoint_due or stop:
                    self.save_checkpoint()
                if stop or self.step >= self.total_steps:
                    stop = True
                    break
            if not stop:
                self.epoch += 1
                self.step_in_epoch = 0

    def _report(self, done: _PendingStep) -> None:
        """Record a finished step: its loss, and its throughput since the previous one finished."""
        loss, tokens, real = done.totals.read()
        now = time.perf_counter()
        throughput, self._clock = real / max(now - self._clock, 1e-9), now
        if keeps(done.step, self.total_steps):  # the loss curve as reported, bounded in size
            self.losses.append((done.step, loss))
        self.events.progress(
            phase="train",
            epoch=done.epoch,
            step=done.step,
            total_steps=self.total_steps,
            loss=loss,
            throughput=throughput,
            unit="tokens/s",
            lr=done.lr,
            target_tokens=tokens,
        )

    def _train_step(self, micro: list[Batch]) -> StepTotals:
        """Queue one optimizer step over `micro`; its global (mean loss, target tokens, real
        tokens) come from the returned StepTotals once the device has run it."""
        counts = to_device(
            torch.tensor(
                [sum(b.n_target for b in micro), sum(b.n_real for b in micro)], dtype=torch.float64
            ),
            self.device,
        )
        self._all_reduce(counts)
        # Sum over tokens / global count, × world because DDP/FSDP average gradients; a device
        # tensor, so the host does not wait for the all-reduce.
        scale = (self.world / counts[0].clamp(min=1.0)).float()
        loss_sum = torch.zeros((), device=self.device)
        for j, batch in enumerate(micro):
            last = j == len(micro) - 1
            sync = (
                contextlib.nullcontext()
                if last or not hasattr(self.model, "no_sync")
                else self.model.no_sync()
            )
            with sync:
                if self.graphs:
                    graphs.begin_step()
                stats = self.model(batch.to(self.device))
                loss = stats.loss_sum * scale
                if self.adalora:
                    # Once per optimizer step in all: each micro-batch adds its share, and the
                    # DDP average over ranks of identical terms leaves it whole.
                    loss = loss + adalora.orthogonal_penalty(self.lm) / len(micro)
                loss.backward()
            loss_sum += stats.loss_sum.detach()
        clip_gradients(self.model.parameters(), self.cfg.trainer.gradient_clipping)
        self.optimizer.step()
        self.scheduler.step()
        if self.adalora:
            adalora.allocate(self.lm, self.step + 1)  # reads the gradients: before they go
        self.optimizer.zero_grad(set_to_none=not self.keep_grads)
        self._all_reduce(loss_sum)
        return StepTotals(torch.cat([loss_sum.double().reshape(1), counts]))

    def _checkpoint_due(self, end_of_epoch: bool) -> bool:
        t = self.cfg.trainer
        if t.steps_per_checkpoint:
            return self.step % t.steps_per_checkpoint == 0
        if t.checkpoints_per_epoch:
            every = max(1, self.steps_per_epoch // t.checkpoints_per_epoch)
            return self.step_in_epoch % every == 0
        return end_of_epoch

    # ---- evaluation ----------------------------------------------------------------------------

    def _evaluate_and_track(self) -> bool:
        """Evaluate on validation, keep the best weights; True when early stopping says stop."""
        if "validation" not in self.samples or self.cfg.trainer.skip_all_evaluation:
            return False
        metrics = self.evaluate("validation")
        feature = self.cfg.output.name
        self.events.metrics(
            [
                {"split": "validation", "feature": feature, "name": k, "value": v}
                for k, v in metrics.items()
            ]
        )
        self._log_decoded_samples()
        name = self.cfg.trainer.validation_metric
        value = metrics[name]
        better = self.best_metric is None or (
            value > self.best_metric if name == "token_accuracy" else value < self.best_metric
        )
        if better:
            self.best_metric, self.best_step = value, self.step
            self.evals_without_improvement = 0
            state = checkpoint.trainable_state(self.model)
            if self.rank == 0:
                self.job.best.parent.mkdir(parents=True, exist_ok=True)
                torch.save(state, self.job.best.with_suffix(".tmp"))
                self.job.best.with_suffix(".tmp").replace(self.job.best)
        else:
            self.evals_without_improvement += 1
        patience = self.cfg.trainer.early_stop
        if patience > 0 and self.evals_without_improvement >= patience:
            self.events.log(
                f"early stopping at step {self.step}: {name} has not improved for "
                f"{patience} evaluations (best {self.best_metric:.4g} at step {self.best_step})"
            )
            return True
        return False

    @_blocks_eager
    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """Loss, perplexity and token accuracy over a split (every rank takes a share)."""
        self.model.eval()
        samples = self.samples[split]
        bs = self.cfg.trainer.eval_batch_size
        units = pack_rows(samples, self.row_len) if self.packed else list(samples)
        mine = units[self.rank :: self.world]
        rounds = math.ceil(math.ceil(len(units) / self.world) / bs)
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for r in range(rounds):
            chunk = mine[r * bs : (r + 1) * bs]
            # A rank with nothing left still runs a forward (FSDP2 all-gathers) on ignored labels.
            batch = self._collate(chunk) if chunk else self._ignored(units[0])
            stats = self.model(batch.to(self.device))
            totals += torch.stack(
                [stats.loss_sum.double(), stats.n_tokens.double(), stats.n_correct.double()]
            )
        self._all_reduce(totals)
        self.model.train()
        loss = float(totals[0] / totals[1].clamp(min=1))
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "token_accuracy": float(totals[2] / totals[1].clamp(min=1)),
        }

    def _collate(self, units: list) -> Batch:
        pad = self.tokenizer.pad_token_id
        return (
            collate_packed(units, self.row_len, pad) if self.packed else collate_padded(units, pad)
        )

    def _ignored(self, unit) -> Batch:
        batch = self._collate([unit])
        batch.labels.fill_(IGNORE)
        return batch

    @_blocks_eager
    @torch.no_grad()
    def _log_decoded_samples(self) -> None:
        """Greedy generations for a few validation rows, as Log events (all ranks generate under
        FSDP2, whose layers all-gather; rank 0 writes)."""
        df = self.job.split("validation")
        if df is None:
            return
        rows = df.head(N_DECODED_SAMPLES).to_dict("records")
        core = core_model(self.lm)
        was_training = core.training
        self.lm.eval()
        if self.fsdp:
            self.model.unshard()
        try:
            for row in rows:
                prompt = render_prompt(self.cfg, row, self.tokenizer)
                ids = self.tokenizer(prompt, return_tensors="pt").to(self.device)
                out = self.lm.generate(
                    **ids,
                    max_new_tokens=min(32, self.cfg.generation["max_new_tokens"] or 32),
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                text = self.tokenizer.decode(
                    out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
                )
                self.events.log(
                    f"sample at step {self.step}: {prompt[-80:]!r} -> {text!r} "
                    f"(expected {str(row[self.cfg.output.column])!r})"
                )
        finally:
            if self.fsdp:
                self.model.reshard()
            self.lm.train(was_training)

    def final_evaluation(self) -> list[dict]:
        """Restore the best weights, then metrics on validation and test."""
        if self.job.best.exists() and self.best_step != self.step:
            checkpoint.load_trainable(self.model, torch.load(self.job.best, weights_only=True))
            self.events.log(
                f"restored the best weights (step {self.best_step}, "
                f"{self.cfg.trainer.validation_metric} {self.best_metric:.4g})"
            )
        out = []
        for split in ("train", "validation", "test"):
            if split not in self.samples or (
                split == "train" and not self.cfg.trainer.evaluate_training_set
            ):
                continue
            values = self.evaluate(split)
            if self.cfg.output.type == "category":
                values["accuracy"] = self.category_accuracy(split)
            for name, value in values.items():
                out.append(
                    {"split": split, "feature": self.cfg.output.name, "name": name, "value": value}
                )
        if out:
            self.events.metrics(out)
        self.final_metrics = out
        return out

    def category_accuracy(self, split: str) -> float:
        """Ludwig's category_extractor: generate, map the text to a label, compare."""
        df = self.job.split(split)
        texts = self.generate_rows(df)
        labels = [self.cfg.output.extract_label(t) for t in texts]
        truth = df[self.cfg.output.column].astype(str).tolist()
        return sum(p == t for p, t in zip(labels, truth)) / max(1, len(truth))

    @_blocks_eager
    @torch.no_grad()
    def generate_rows(self, df: pd.DataFrame) -> list[str]:
        """The generated answer for every row of `df`, in order; each rank generates every
        world-th row (under FSDP all ranks must run the forward anyway)."""
        from services.trainer.recipes.generative.predict import (
            generate_texts,
            generation_from_config,
        )

        gen = generation_from_config(self.cfg, self.tokenizer, core_model(self.lm).config)
        was_training = self.lm.training
        self.lm.eval()
        if self.fsdp:
            self.model.unshard()
        try:
            mine = generate_texts(
                self.cfg,
                self.lm,
                self.tokenizer,
                df.iloc[self.rank :: self.world],
                gen,
                self.device,
            )
        finally:
            if self.fsdp:
                self.model.reshard()
            self.lm.train(was_training)
        if self.world == 1:
            return mine
        parts: list = [None] * self.world
        dist.all_gather_object(parts, mine)
        out: list[str] = [""] * len(df)
        for rank, texts in enumerate(parts):
            out[rank :: self.world] = texts
        return out

    # ---- persistence -------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        extra = {
            "step": self.step,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "evals_without_improvement": self.evals_without_improvement,
            "losses": self.losses,
            "scheduler": self.scheduler.state_dict(),
            "config": self.job.config_dict,
        }
        path = checkpoint.save(
            self.job.checkpoints, self.step, self.model, self.optimizer, extra, self.rank
        )
        self.events.log(f"checkpoint saved at step {self.step}: {path.name}")

    def save_artifact(self) -> None:
        state = checkpoint.trainable_state(self.model)
        adapter = self.cfg.adapter
        if self.corda_initial is not None:
            adapter, state = adapters.corda_as_lora(adapter, state, self.corda_initial)
        if self.rank == 0:
            artifacts.write(
                self.job.artifact_dir,
                cfg=self.cfg,
                adapter=adapter,
                config_dict=self.job.config_dict,
                tokenizer=self.tokenizer,
                trainable=state,
                metrics=self.final_metrics,
                job_id=self.job.job_id,
                dtype=compute_dtype(self.device),
                total_steps=self.total_steps,
                rank_pattern=adalora.rank_pattern(self.lm) if self.adalora else None,
                patterns=adapters.eva_patterns(self.lm),
            )
            self.events.log(f"artifact written: {artifacts.kind(self.cfg)}")

    def cleanup(self) -> None:
        self.events.close()

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        if self.world > 1:
            dist.all_reduce(tensor)
