"""The predictive recipe with frozen encoders: text embeddings from the embedder (through its
cache), number/binary/category features beside them, a concat combiner and a head per output.

Life: `setup()` (columns checked, labels and inputs encoded, embeddings fetched once for every
distinct text of every split) → `train()` (the shared loop) → `evaluate()` (calibration,
metrics) → `save_artifact()` → `cleanup()`. The encoder never runs here: the embedder owns it,
which is what lets a second job on the same texts cost nothing. A trainable text encoder goes to
`adapted.py` instead.
"""

from __future__ import annotations

import time

import numpy as np
import structlog
import torch

from services.trainer.context import JobContext, JobResult, Log, Progress, run_recipe
from services.trainer.recipes.predictive.data import Prepared, one_class_splits, prepare
from services.trainer.recipes.predictive.embed import embed_frozen
from services.trainer.recipes.predictive.export import export_if_possible
from services.trainer.recipes.predictive.finish import calibrate_and_evaluate, write_artifact
from services.trainer.recipes.predictive.loop import HeadTrainer
from tunewire import heads as pm
from tunewire.config.ecd import EcdConfig

log = structlog.get_logger(__name__)


def seed_everything(cfg: EcdConfig) -> np.random.Generator:
    seed = cfg.trainer.seed if cfg.trainer.seed is not None else cfg.seed
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def embed_progress(ctx: JobContext):
    """A progress callback for embed calls: throughput events, and cancellation honoured."""
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        ctx.emit(
            Progress(
                "embedding", step=done, total_steps=total, throughput=done / elapsed, unit="texts/s"
            )
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
        progress=embed_progress(ctx),
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


def build_model(
    cfg: EcdConfig, data: Prepared, refs: dict[str, pm.EncoderRef]
) -> pm.PredictiveModel:
    specs = pm.input_specs(cfg, data.inputs, {k: r.dimension for k, r in refs.items()})
    outputs = [(f, data.outputs[f.name]) for f in cfg.output_features]
    return pm.PredictiveModel(specs, cfg.combiner, outputs)


def begin(ctx: JobContext) -> tuple[np.random.Generator, Prepared, dict[str, pm.EncoderRef]]:
    """What both recipes start from: seeded generators, the prepared splits, the encoders."""
    rng = seed_everything(ctx.config)
    data = prepare(ctx.config, {"train": ctx.train, "validation": ctx.validation, "test": ctx.test})
    for warning in one_class_splits(ctx.config, data):
        log.warning("one-class split", job_id=ctx.job_id, message=warning)
        ctx.emit(Log(warning))
    return rng, data, pm.encoder_refs(ctx.config)


class PredictiveRecipe:
    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.cfg: EcdConfig = ctx.config
        self.log = log.bind(job_id=ctx.job_id)

    def setup(self) -> None:
        self.rng, self.data, self.encoders = begin(self.ctx)
        self.embed_stats = embed_frozen_features(self.ctx, self.data, list(self.encoders.values()))
        self.model = build_model(self.cfg, self.data, self.encoders)
        # Every input is fixed (cached vectors, encoded columns): nothing to compute per batch.
        self.trainer = HeadTrainer(self.ctx, self.model, self.data)

    def train(self) -> None:
        self.trainer.train(int(self.rng.integers(2**31)))

    def evaluate(self) -> JobResult:
        self.calibration, self.metrics, self.logits = calibrate_and_evaluate(self.ctx, self.trainer)
        return JobResult(metrics=self.metrics)

    def save_artifact(self) -> list[str]:
        return write_artifact(
            self.ctx,
            self.trainer,
            self.encoders,
            self.metrics,
            self.logits,
            {"embedding": self.embed_stats, "calibration": self.calibration},
            extra_files=lambda d: export_if_possible(self.ctx, self.model, self.encoders, d),
        )

    def cleanup(self) -> None:
        # Whatever setup got as far as making (it may have failed part way).
        if hasattr(self, "trainer"):
            self.trainer.release()
        if hasattr(self, "data"):
            self.data.release()


def run_predictive_job(ctx: JobContext) -> JobResult:
    """The ecd entry point: a trainable (adapted) text encoder runs the PEFT recipe."""
    if any(f.type == "text" and f.encoder.trainable for f in ctx.config.input_features):
        from services.trainer.recipes.predictive.adapted import AdaptedRecipe

        recipe: PredictiveRecipe | AdaptedRecipe = AdaptedRecipe(ctx)
    else:
        recipe = PredictiveRecipe(ctx)
    return run_recipe(recipe)
