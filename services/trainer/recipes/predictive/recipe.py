"""The predictive recipe: frozen encoder embeddings from the embedder (through its cache), a
task head trained on them.

Life: `setup()` (columns checked, labels encoded, embeddings fetched once for every distinct text
of every split) → `train()` (explicit epochs, mini-batches, early stopping on the validation
metric, best weights kept) → `evaluate()` → `save_artifact()` → `cleanup()`. The encoder never
runs here: the embedder owns it, which is what lets a second job on the same texts cost nothing.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pandas as pd
import structlog
import torch

from tunewire.config import to_dict
from tunewire.config.ecd import EcdConfig
from tunewire.errors import FailedPrecondition, InvalidArgument
from services.trainer.context import (JobContext, JobResult, Log, MetricValue, Metrics,
                                      Progress)
from services.trainer.features import check_columns, encode_output, fit_output, texts
from services.trainer.metrics import improves
from services.trainer.recipes.predictive import model as pm

log = structlog.get_logger(__name__)

SPLITS = ("train", "validation", "test")


class PredictiveRecipe:
    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.cfg: EcdConfig = ctx.config
        self.log = log.bind(job_id=ctx.job_id)
        self.frames: dict[str, pd.DataFrame] = {}
        self.x: dict[str, np.ndarray] = {}
        self.y: dict[str, np.ndarray] = {}
        self.best_state: dict | None = None
        self.history: list[dict] = []

    # ---------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg = self.cfg
        seed = cfg.trainer.seed if cfg.trainer.seed is not None else cfg.seed
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        inp, out = cfg.input_features[0], cfg.output_features[0]
        splits = {"train": self.ctx.train, "validation": self.ctx.validation,
                  "test": self.ctx.test}
        for name, df in splits.items():
            if df is None or len(df) == 0:
                continue
            check_columns(df, {"input_features[0].column": inp.column}, f"{name} set")
            if name == "train" or out.column in df.columns:
                check_columns(df, {"output_features[0].column": out.column}, f"{name} set")
                # Ludwig drops rows whose label is missing.
                labels = df[out.column]
                keep = ~(labels.isna() | (labels.astype(str).str.strip() == ""))
                df = df[keep].reset_index(drop=True)
            self.frames[name] = df
        if len(self.frames.get("train", [])) == 0:
            raise InvalidArgument("the training split has no labelled rows",
                                  field="output_features[0].column")
        self.meta = fit_output(self.frames["train"], out, "output_features[0].column")
        for name, df in self.frames.items():
            if out.column in df.columns:
                self.y[name] = encode_output(df, self.meta, "output_features[0].column")
        self._embed_all()
        self.model = pm.PredictiveModel(self.encoder.dimension, out, self.meta)
        self.optimizer = self._optimizer()

    def _embed_all(self) -> None:
        """One streamed embed call for every distinct text of every split."""
        inp = self.cfg.input_features[0]
        if self.ctx.embedder is None:
            raise FailedPrecondition("no embedder is configured for this trainer",
                                     field="input_features[0].encoder")
        if not inp.preprocessing.cache_encoder_embeddings:
            self.ctx.emit(Log("cache_encoder_embeddings is false: embeddings are still computed "
                              "by the embedder (a frozen encoder gives the same vectors)"))
        per_split = {name: texts(df, inp.column, lowercase=inp.preprocessing.lowercase,
                                 fill=inp.preprocessing.fill_value)
                     for name, df in self.frames.items()}
        unique = list(dict.fromkeys(t for ts in per_split.values() for t in ts))
        self.encoder = pm.encoder_ref(self.cfg)
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            elapsed = max(time.monotonic() - started, 1e-9)
            self.ctx.emit(Progress("embedding", step=done, total_steps=total,
                                   throughput=done / elapsed, unit="texts/s"))
            self.ctx.check_cancelled()

        result = self.ctx.embedder.embed_many(unique, self.encoder.spec(), progress=progress,
                                              cancelled=self.ctx.cancel_event.is_set)
        self.ctx.check_cancelled()
        self.encoder.fingerprint = result.fingerprint
        self.encoder.dimension = int(result.vectors.shape[1])
        self.embed_stats = {"texts": len(unique), "cache_hits": result.cache_hits,
                            "cache_misses": result.cache_misses,
                            "seconds": time.monotonic() - started}
        self.ctx.emit(Log(f"embedded {len(unique)} distinct texts: {result.cache_hits} from the "
                          f"cache, {result.cache_misses} computed"))
        self.log.info("embeddings ready", **self.embed_stats)
        index = {t: i for i, t in enumerate(unique)}
        vectors = result.vectors.astype(np.float32, copy=False)
        for name, ts in per_split.items():
            self.x[name] = vectors[[index[t] for t in ts]]

    def _optimizer(self) -> torch.optim.Optimizer:
        opt = self.cfg.trainer.optimizer
        lr = float(self.cfg.trainer.learning_rate)
        params = self.model.parameters()
        if opt.type in ("adam", "adamw"):
            cls = torch.optim.AdamW if opt.type == "adamw" else torch.optim.Adam
            return cls(params, lr=lr, betas=tuple(opt.betas), eps=opt.eps,
                       weight_decay=opt.weight_decay, amsgrad=opt.amsgrad)
        if opt.type == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=opt.momentum,
                                   weight_decay=opt.weight_decay)
        raise InvalidArgument(f"optimizer {opt.type!r} is for generative models",
                              field="trainer.optimizer.type")

    # ---------------------------------------------------------------------------------- train
    def train(self) -> None:
        tcfg = self.cfg.trainer
        x = torch.from_numpy(self.x["train"])
        y = torch.from_numpy(self.y["train"])
        n = len(x)
        batch = int(tcfg.batch_size)
        steps_per_epoch = math.ceil(n / batch)
        total = steps_per_epoch * tcfg.epochs
        if tcfg.train_steps:
            total = min(total, tcfg.train_steps)
        monitor = "validation" if "validation" in self.y else "train"
        metric = tcfg.validation_metric or "loss"
        best, stale, step = None, 0, 0
        clip = (tcfg.gradient_clipping or {}).get("clipglobalnorm")
        gen = torch.Generator().manual_seed(int(self.rng.integers(2**31)))
        for epoch in range(1, tcfg.epochs + 1):
            self.model.train()
            order = torch.randperm(n, generator=gen) if tcfg.should_shuffle else torch.arange(n)
            started, seen, running = time.monotonic(), 0, 0.0
            for start in range(0, n, batch):
                self.ctx.check_cancelled()
                idx = order[start:start + batch]
                out = self.model(x[idx])
                loss = self.model.loss(out, y[idx]) + self._regularization()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                self.optimizer.step()
                step += 1
                seen += len(idx)
                running += loss.item() * len(idx)
                if step >= total:
                    break
            elapsed = max(time.monotonic() - started, 1e-9)
            train_loss = running / max(seen, 1)
            self.ctx.emit(Progress("training", epoch=epoch, step=step, total_steps=total,
                                   loss=train_loss, throughput=seen / elapsed))
            scores = self.model.infer(self.x[monitor])
            values = self.model.metrics(scores, self.y[monitor])
            values["loss"] = self._eval_loss(monitor)
            self.history.append({"epoch": epoch, "train_loss": train_loss,
                                 **{f"{monitor}_{k}": v for k, v in values.items()}})
            feature = self.cfg.output_features[0].name
            self.ctx.emit(Metrics([MetricValue(monitor, feature, k, v) for k, v in values.items()]))
            if metric not in values:
                raise InvalidArgument(
                    f"validation_metric {metric!r} is not computed for a "
                    f"{self.meta.type} output (available: {', '.join(sorted(values))})",
                    field="trainer.validation_metric")
            if improves(metric, values[metric], best):
                best, stale = values[metric], 0
                self.best_state = copy.deepcopy(self.model.state_dict())
                self.best_epoch = epoch
            else:
                stale += 1
                if tcfg.early_stop >= 0 and stale > tcfg.early_stop:
                    self.ctx.emit(Log(f"early stop at epoch {epoch}: {monitor} {metric} has not "
                                      f"improved for {stale} epochs (best {best:.4f})"))
                    break
            if step >= total:
                break
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def _regularization(self) -> torch.Tensor | float:
        lam = self.cfg.trainer.regularization_lambda
        kind = self.cfg.trainer.regularization_type
        if not lam or not kind:
            return 0.0
        weights = [p for name, p in self.model.named_parameters() if name.endswith("weight")]
        l1 = sum(p.abs().sum() for p in weights) if "l1" in kind else 0.0
        l2 = sum((p**2).sum() for p in weights) if "l2" in kind else 0.0
        return lam * (l1 + l2)

    @torch.no_grad()
    def _eval_loss(self, split: str) -> float:
        self.model.eval()
        x = torch.from_numpy(self.x[split])
        y = torch.from_numpy(self.y[split])
        return float(self.model.loss(self.model(x), y))

    # ------------------------------------------------------------------------------- evaluate
    def evaluate(self) -> JobResult:
        feature = self.cfg.output_features[0].name
        values: list[MetricValue] = []
        self.test_scores = None
        for split in SPLITS:
            if split not in self.y or len(self.y[split]) == 0:
                continue
            self.ctx.emit(Progress("evaluating", step=len(self.y[split]),
                                   total_steps=len(self.y[split])))
            scores = self.model.infer(self.x[split])
            if split == "test":
                self.test_scores = scores
            metrics = self.model.metrics(scores, self.y[split])
            metrics["loss"] = self._eval_loss(split)
            values += [MetricValue(split, feature, k, float(v)) for k, v in metrics.items()]
        self.ctx.emit(Metrics(values))
        self.metrics = values
        return JobResult(metrics=values)

    # ------------------------------------------------------------------------------- artifact
    def save_artifact(self) -> None:
        directory = self.ctx.artifact_dir
        metrics: dict = {}
        for m in self.metrics:
            metrics.setdefault(m.split, {}).setdefault(m.feature, {})[m.name] = m.value
        task = {"binary": "text-classification", "category": "text-classification",
                "number": "text-classification"}[self.meta.type]
        pm.save(self.model, directory, encoder=self.encoder, config=to_dict(self.cfg),
                manifest_extra={"job_id": self.ctx.job_id, "task": task, "metrics": metrics,
                                "history": self.history,
                                "best_epoch": getattr(self, "best_epoch", None),
                                "embedding": self.embed_stats})
        if self.test_scores is not None:
            preds, probs, names = self.model.decode(self.test_scores)
            frame = pd.DataFrame({f"{self.meta.name}_predictions": preds})
            if probs is not None:
                for j, name in enumerate(names):
                    frame[f"{self.meta.name}_probabilities_{name}"] = probs[:, j]
            frame.to_csv(self.ctx.work_dir / "test_predictions.csv", index=False)
        try:
            from tunewire.model_card import render_model_card
        except ImportError:
            return
        (directory / "README.md").write_text(render_model_card(directory))

    def cleanup(self) -> None:
        self.x.clear()
        self.frames.clear()


def run_predictive_job(ctx: JobContext) -> JobResult:
    recipe = PredictiveRecipe(ctx)
    try:
        recipe.setup()
        recipe.train()
        result = recipe.evaluate()
        recipe.save_artifact()
        return result
    finally:
        recipe.cleanup()
