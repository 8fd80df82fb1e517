"""Prediction with a predictive artifact: inputs encoded with the stored metadata, frozen text
features from the embedder (cached), an adapted text feature through the base encoder plus the
artifact's `encoder_adapter/`, then the head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from services.trainer.context import MetricValue
from services.trainer.recipes.predictive.data import input_columns, output_columns
from services.trainer.recipes.predictive.embed import embed_frozen
from services.trainer.recipes.predictive.metrics import output_metrics
from services.trainer.recipes.predictive.reports import predict_statistics
from tunewire import heads as pm
from tunewire.features import check_columns, encode_inputs, encode_output, split_texts
from tunewire.heads import FeatureOutput


def predict_predictive(
    artifact_dir: Path, df: pd.DataFrame, embedder, evaluate: bool, batch_size: int = 0
) -> tuple[list[FeatureOutput], list[MetricValue], dict]:
    """Outputs per feature; with `evaluate`, metrics and Ludwig's test statistics too."""
    loaded = pm.load(artifact_dir)
    cfg, model = loaded.config, loaded.model
    check_columns(df, input_columns(cfg), "data set")
    if evaluate:
        check_columns(df, output_columns(cfg), "data set")
    metas = {s.name: s.meta for s in model.inputs if s.meta is not None}
    x = encode_inputs(cfg, metas, df)
    texts = split_texts(cfg, df)
    frozen = [r for r in loaded.encoders.values() if not r.adapted]
    if frozen:
        vectors, _ = embed_frozen(embedder, frozen, {"data": texts}, check_fingerprint=True)
        x.update(vectors["data"])
    adapted = [r for r in loaded.encoders.values() if r.adapted]
    encoder = None
    if adapted:
        from services.trainer.recipes.predictive.adapted import EVAL_BATCH, load_adapted

        encoder = load_adapted(adapted[0], artifact_dir / pm.ADAPTER_DIR)
    ref = adapted[0] if adapted else None

    def batch(idx: np.ndarray) -> dict[str, torch.Tensor]:
        out = {k: torch.from_numpy(v[idx]) for k, v in x.items()}
        if encoder is not None and ref is not None:
            out[ref.feature] = encoder([texts[ref.feature][i] for i in idx]).cpu()
        return out

    size = batch_size or (EVAL_BATCH if encoder is not None else int(cfg.trainer.eval_batch_size))
    logits = pm.logits_in_batches(model, batch, len(df), size)
    outputs: list[FeatureOutput] = []
    metrics: list[MetricValue] = []
    labels: dict[str, np.ndarray] = {}
    for i, (name, head) in enumerate(model.outputs.items()):
        scores = head.scores(logits[name])
        outputs.append(FeatureOutput(name, *head.decode(scores)))
        if evaluate:
            y = labels[name] = encode_output(df, head.meta, f"output_features[{i}].column")
            metrics += [
                MetricValue("test", name, k, float(v))
                for k, v in output_metrics(head, scores, y).items()
            ]
    if evaluate:  # the loss too, as training reports it: per output and combined
        with torch.no_grad():
            total, losses = model.loss(logits, {k: torch.from_numpy(v) for k, v in labels.items()})
        metrics += [MetricValue("test", k, "loss", float(v)) for k, v in losses.items()]
        metrics.append(MetricValue("test", "combined", "loss", float(total)))
    statistics = predict_statistics(model, labels, logits, metrics) if evaluate else {}
    return outputs, metrics, statistics
