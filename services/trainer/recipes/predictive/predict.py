"""Prediction with a predictive artifact: embeddings from the embedder (cached), then the head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from services.trainer.context import MetricValue
from services.trainer.features import check_columns, encode_output, texts
from services.trainer.recipes.predictive import model as pm


@dataclass
class FeatureOutput:
    feature: str
    predictions: list[str]
    probabilities: np.ndarray | None
    class_names: list[str]


def predict_predictive(artifact_dir: Path, df: pd.DataFrame, embedder, evaluate: bool
                       ) -> tuple[list[FeatureOutput], list[MetricValue]]:
    model, encoder, cfg, _ = pm.load(artifact_dir)
    inp, out = cfg.input_features[0], cfg.output_features[0]
    check_columns(df, {"input_features[0].column": inp.column}, "data set")
    if evaluate:
        check_columns(df, {"output_features[0].column": out.column}, "data set")
    ts = texts(df, inp.column, lowercase=inp.preprocessing.lowercase,
               fill=inp.preprocessing.fill_value)
    unique = list(dict.fromkeys(ts))
    result = embedder.embed_many(unique, encoder.spec())
    if result.fingerprint and encoder.fingerprint and result.fingerprint != encoder.fingerprint:
        # Same settings, different weights or tokenizer: the head would be fed the wrong space.
        from tunewire.errors import FailedPrecondition

        raise FailedPrecondition(
            f"the encoder {encoder.model!r} now has fingerprint {result.fingerprint[:12]}, the "
            f"model was trained on {encoder.fingerprint[:12]}", field="model")
    index = {t: i for i, t in enumerate(unique)}
    x = result.vectors.astype(np.float32, copy=False)[[index[t] for t in ts]]
    scores = model.infer(x)
    preds, probs, names = model.decode(scores)
    metrics: list[MetricValue] = []
    if evaluate:
        y = encode_output(df, model.meta, "output_features[0].column")
        metrics = [MetricValue("test", out.name, k, float(v))
                   for k, v in model.metrics(scores, y).items()]
    return [FeatureOutput(out.name, preds, probs, names)], metrics
