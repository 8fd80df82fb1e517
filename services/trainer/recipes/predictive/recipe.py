"""The predictive recipe: text features through their encoders, number/binary/category features
beside them, a concat combiner and a head per output (`tunewire.heads`).

Encoders come in two kinds. A frozen one never runs here: the embedder owns it and its vectors
are fetched once for every distinct text of every split, through the embedder's cache, which is
what lets a second job on the same texts cost nothing. An adapted one (`trainable: true` with a
LoRA adapter, `adapted.py`) is loaded here and trained with the head, texts through it per batch.

Life: `setup()` (labels and inputs encoded, frozen vectors fetched, the adapted encoder loaded,
the model built) → `train()` (the shared loop, `loop.py`) → `evaluate()` (calibration, metrics)
→ `save_artifact()` (the head, the adapter, the stock export where it fits) → `cleanup()`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import structlog
import torch

from services.trainer.context import JobContext, JobResult, Log, Progress, run_recipe
from services.trainer.recipes.predictive import plot_worker
from services.trainer.recipes.predictive.adapted import EVAL_BATCH, AdaptedEncoder, adapt
from services.trainer.recipes.predictive.data import Prepared, one_class_splits, prepare
from services.trainer.recipes.predictive.embed import embed_frozen
from services.trainer.recipes.predictive.export import export_if_possible
from services.trainer.recipes.predictive.finish import calibrate_and_evaluate, write_artifact
from services.trainer.recipes.predictive.loop import HeadTrainer
from tunewire import heads as pm
from tunewire.config.ecd import EcdConfig, differences_from_ludwig
from tunewire.model_init import building_modules

log = structlog.get_logger(__name__)


def seed_everything(cfg: EcdConfig) -> np.random.Generator:
    seed = cfg.trainer.seed if cfg.trainer.seed is not None else cfg.seed
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def embed_progress(ctx: JobContext, splits: list[str] | None = None):
    """A progress callback for embed calls: throughput events, and cancellation honoured. The
    phase names the splits whose texts are embedded (together: a text shared by splits is
    computed once)."""
    started = time.monotonic()
    phase = "embedding" + (f" {'+'.join(splits)}" if splits else "")

    def progress(done: int, total: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        ctx.emit(
            Progress(phase, step=done, total_steps=total, throughput=done / elapsed, unit="texts/s")
        )
        ctx.check_cancelled()

    return progress


def embed_frozen_features(ctx: JobContext, data: Prepared, refs: list[pm.EncoderRef]) -> dict:
    """Fill `data.x` with the frozen text features' vectors; returns the embedding stats."""
    if not refs:
        return {}
    for i, f in enumerate(ctx.config.input_features):
        if (
            f.type == "text"
            and not f.encoder.trainable
            and not f.preprocessing.cache_encoder_embeddings
        ):
            ctx.emit(
                Log(
                    f"input_features[{i}]: cache_encoder_embeddings is false; embeddings "
                    "are still computed by the embedder (a frozen encoder gives the same "
                    "vectors)"
                )
            )
    vectors, stats = embed_frozen(
        ctx.embedder,
        refs,
        data.texts,
        progress=embed_progress(ctx, list(data.texts)),
        cancelled=ctx.cancel_event.is_set,
    )
    ctx.check_cancelled()
    for split, per in vectors.items():
        data.x[split].update(per)
    ctx.emit(
        Log(
            f"embedded {stats.texts} distinct texts: {stats.cache_hits} from the cache, "
            f"{stats.cache_misses} computed"
        )
    )
    log.info(
        "embeddings ready",
        job_id=ctx.job_id,
        texts=stats.texts,
        hits=stats.cache_hits,
        misses=stats.cache_misses,
        seconds=round(stats.seconds, 3),
    )
    return {
        "texts": stats.texts,
        "cache_hits": stats.cache_hits,
        "cache_misses": stats.cache_misses,
        "seconds": stats.seconds,
        "per_feature": stats.per_feature,
    }


@building_modules()
def build_model(
    cfg: EcdConfig, data: Prepared, refs: dict[str, pm.EncoderRef]
) -> pm.PredictiveModel:
    specs = pm.input_specs(cfg, data.inputs, {k: r.dimension for k, r in refs.items()})
    outputs = [(f, data.outputs[f.name]) for f in cfg.output_features]
    return pm.PredictiveModel(specs, cfg.combiner, outputs)


class PredictiveRecipe:
    """A head over encoders of two kinds: frozen ones, whose vectors come once from the embedder
    (through its cache), and at most one adapted text encoder, trained here with LoRA and run on
    every batch (`adapted.py`)."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.cfg: EcdConfig = ctx.config
        self.log = log.bind(job_id=ctx.job_id)
        self.adapted: AdaptedEncoder | None = None

    def setup(self) -> None:
        ctx = self.ctx
        plot_worker.prestart()  # it imports matplotlib while this job embeds and trains
        differences = differences_from_ludwig(self.cfg)
        if differences:  # the job's first event, once
            ctx.emit(Log("differences from Ludwig: " + "; ".join(differences)))
        self.rng = seed_everything(self.cfg)
        self.data = prepare(
            self.cfg, {"train": ctx.train, "validation": ctx.validation, "test": ctx.test}
        )
        for warning in one_class_splits(self.cfg, self.data):
            self.log.warning("one-class split", message=warning)
            ctx.emit(Log(warning))
        self.encoders = pm.encoder_refs(self.cfg)
        frozen = [r for r in self.encoders.values() if not r.adapted]
        self.embed_stats = embed_frozen_features(ctx, self.data, frozen)
        if len(frozen) < len(self.encoders):
            self.adapted = adapt(ctx, self.encoders)
        self.model = build_model(self.cfg, self.data, self.encoders)
        if self.adapted is None:
            # Every input is fixed (cached vectors, encoded columns): nothing to compute per batch.
            self.trainer = HeadTrainer(ctx, self.model, self.data)
        else:
            self.trainer = HeadTrainer(
                ctx,
                self.model,
                self.data,
                self._adapted_inputs,
                extra=self.adapted,
                eval_batch_size=EVAL_BATCH,
                device=self.adapted.device,
            )

    def _adapted_inputs(self, split: str, idx: np.ndarray, train: bool) -> dict[str, torch.Tensor]:
        """The adapted feature's vectors of rows `idx`, on the encoder's (and head's) device;
        the other inputs are fixed and the trainer takes them itself."""
        assert self.adapted is not None
        feature = self.adapted.ref.feature
        texts = self.data.texts[split][feature]
        with torch.set_grad_enabled(train):
            return {feature: self.adapted([texts[i] for i in idx])}

    def train(self) -> None:
        with self.trainer.cpu_threads():
            self.trainer.train(int(self.rng.integers(2**31)))

    def evaluate(self) -> JobResult:
        with self.trainer.cpu_threads():
            self.calibration, self.metrics, self.logits = calibrate_and_evaluate(
                self.ctx, self.trainer
            )
        return JobResult(metrics=self.metrics)

    def save_artifact(self) -> list[str]:
        summary = {
            "embedding": self.embed_stats,
            "calibration": self.calibration,
            "differences_from_ludwig": differences_from_ludwig(self.cfg),
        }
        if self.adapted is not None:
            summary["encoder_adapter"] = pm.ADAPTER_DIR
        return write_artifact(
            self.ctx,
            self.trainer,
            self.encoders,
            self.metrics,
            self.logits,
            summary,
            extra_files=self._extra_files,
        )

    def _extra_files(self, directory: Path) -> list[str]:
        """The adapter (if any) and the stock transformers export where the head fits one."""
        if self.adapted is None:
            return export_if_possible(self.ctx, self.model, self.encoders, directory)
        peft_model = self.adapted.encoder
        peft_model.save_pretrained(str(directory / pm.ADAPTER_DIR))
        # Merging changes the wrapped model in place: only after the adapter is saved.
        return [pm.ADAPTER_DIR] + export_if_possible(
            self.ctx, self.model, self.encoders, directory, base=peft_model.merge_and_unload
        )

    def cleanup(self) -> None:
        # Whatever setup got as far as making (it may have failed part way).
        if hasattr(self, "trainer"):
            self.trainer.release()
        if hasattr(self, "data"):
            self.data.release()


def run_predictive_job(ctx: JobContext) -> JobResult:
    """The ecd entry point."""
    return run_recipe(PredictiveRecipe(ctx))
