"""Online prediction: rows in, Ludwig-named outputs out, with no data set and no job.

Each text feature's texts go through `EmbedderService.embed` under the encoder settings the
model was trained with (so a text seen in training, or in an earlier request, is one cache
lookup); the other features are encoded with the artifact's training set metadata, exactly as
the trainer's batch `Predict` encodes them; then the head runs on the CPU. The vectors must come
from the encoder the head was trained on: a different fingerprint is FAILED_PRECONDITION.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

from services.embedder.heads import ServedHead
from services.embedder.service import EmbedderService
from tunewire import heads as th
from tunewire.errors import FailedPrecondition, InvalidArgument
from tunewire.features import encode_inputs, split_texts


@dataclass
class RowsPrediction:
    outputs: list[th.FeatureOutput]
    rows: int
    cache_hits: int
    cache_misses: int


def rows_frame(head: ServedHead, columns: dict[str, list]) -> pd.DataFrame:
    """The request's columns as a table; every input feature's column must be there, all of
    one length. Columns the model does not read are ignored (a whole record may be sent)."""
    needed = [str(f.column) for f in head.config.input_features]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise InvalidArgument(
            f"missing input column {missing[0]!r} (the model reads {', '.join(needed)})",
            field="columns",
        )
    lengths = {len(columns[c]) for c in needed}
    if len(lengths) > 1:
        raise InvalidArgument(
            f"input columns differ in length ({sorted(lengths)})", field="columns"
        )
    return pd.DataFrame({c: columns[c] for c in dict.fromkeys(needed)})


@torch.no_grad()
def predict_rows(
    service: EmbedderService,
    head: ServedHead,
    columns: dict[str, list],
    cancelled: Callable[[], bool] | None = None,
) -> RowsPrediction:
    df = rows_frame(head, columns)
    n = len(df)
    if n == 0:
        raise InvalidArgument("no rows to predict", field="columns")
    x = {
        k: torch.from_numpy(v) for k, v in encode_inputs(head.config, head.input_metas, df).items()
    }
    hits = misses = 0
    for feature, texts in split_texts(head.config, df).items():
        ref = head.encoders[feature]
        result = service.embed(ref.spec(), texts, cancelled)
        if ref.fingerprint and result.fingerprint != ref.fingerprint:
            # Same settings, different weights or tokenizer: the head would read the wrong space.
            raise FailedPrecondition(
                f"the encoder {ref.model!r} now has fingerprint {result.fingerprint[:12]}, the "
                f"model was trained on {ref.fingerprint[:12]}",
                field="model",
            )
        x[feature] = torch.tensor(result.vectors, dtype=torch.float32)  # a copy: may be read-only
        hits, misses = hits + result.hits, misses + result.misses
    logits = head.model(x)
    return RowsPrediction(th.decode_outputs(head.model, logits), n, hits, misses)
