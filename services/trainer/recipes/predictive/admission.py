"""What a predictive job is checked for at admission, beyond its config and columns: labels that
parse and frozen encoders the embedder can load, so a bad job fails its create, not later."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.trainer.datasets import DatasetStore
from services.trainer.encoder_check import check_encoder_loads
from tunewire.config.ecd import EcdConfig
from tunewire.features import encode_output, fit_output
from tunewire.heads import encoder_refs


def check_labels(config: EcdConfig, datasets: DatasetStore, dataset_ids: list[str]) -> None:
    """Parse every labelled output column now, so a bad label fails the create with its row
    and column instead of failing the job later."""
    for ds_id in dataset_ids:
        df = datasets.load(ds_id)
        for i, feature in enumerate(config.output_features):
            labels = df[feature.column]
            df_l = df[~(labels.isna() | (labels.astype(str).str.strip() == ""))]
            path = f"output_features[{i}].column"
            encode_output(df_l, fit_output(df_l, feature, path), path)


def check_encoders(
    config: EcdConfig, embedder: Callable[[], Any] | None, embedder_address: str
) -> None:
    """Ask the embedder to load each frozen text encoder now, so a bad path fails the
    create, not the job. (An adapted encoder loads in the trainer, when the job runs.) Without
    an embedder (a runner driven on its own, in tests) there is nothing to ask."""
    if embedder is None:
        return
    refs = encoder_refs(config)
    for i, feature in enumerate(config.input_features):
        ref = refs.get(feature.name)
        if ref is None or ref.adapted:
            continue
        path = f"input_features[{i}].encoder.{feature.encoder.model_key}"
        check_encoder_loads(embedder, ref.spec, path, embedder_address)
