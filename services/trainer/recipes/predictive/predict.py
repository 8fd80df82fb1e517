"""Prediction with a predictive artifact: inputs encoded with the stored metadata, frozen text
features from the embedder (cached), an adapted text feature through the base encoder plus the
artifact's `encoder_adapter/`, then the head."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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
from tunewire.errors import FailedPrecondition
from tunewire.features import check_columns, encode_inputs, encode_output, split_texts
from tunewire.heads import EncoderRef, FeatureOutput
from tunewire.model_card import LOCAL_PREFIX


def predict_predictive(
    artifact_dir: Path,
    df: pd.DataFrame,
    embedder,
    evaluate: bool,
    batch_size: int = 0,
    model_names: Mapping[str, str] | None = None,
) -> tuple[list[FeatureOutput], list[MetricValue], dict]:
    """Outputs per feature; with `evaluate`, metrics and Ludwig's test statistics too."""
    loaded = pm.load(artifact_dir)
    _find_local_encoders(loaded.encoders, model_names or {})
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


def _find_local_encoders(encoders: Mapping[str, EncoderRef], names: Mapping[str, str]) -> None:
    """An artifact from the Hub names an encoder that was a local path where it was trained as
    `<local>/NAME` (the server's paths never reach the Hub): here it is the encoder registered
    as NAME (`--model NAME=PATH`), whose fingerprint the embedder then checks against the one the
    head was trained on."""
    for feature, ref in encoders.items():
        if not ref.spec.model.startswith(LOCAL_PREFIX):
            continue
        name = ref.spec.model[len(LOCAL_PREFIX) :]
        if name not in names:
            raise FailedPrecondition(
                f"the artifact's encoder for {feature!r} was a local path where it was trained "
                f"({ref.spec.model}); start the trainer with --model {name}=PATH naming that "
                "encoder",
                field="model",
            )
        ref.spec = dataclasses.replace(ref.spec, model=names[name])
