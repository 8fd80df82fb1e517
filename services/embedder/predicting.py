"""Online prediction: rows in, Ludwig-named outputs out, with no data set and no job.

Each text feature's texts go through `EmbedderService.embed` under the encoder settings the
model was trained with (so a text seen in training, or in an earlier request, is one cache
lookup; its misses enter the cache behind the answer, from the cache's writer thread); the
other features are encoded with the artifact's training set metadata, exactly as
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
from tunewire.cpu_threads import intra_op_threads
from tunewire.errors import InvalidArgument
from tunewire.features import encode_inputs


@dataclass
class RowsPrediction:
    outputs: list[th.FeatureOutput]
    rows: int
    cache_hits: int
    cache_misses: int


def _checked(head: ServedHead, columns: dict[str, list]) -> list[str]:
    """The input columns, each present and all of one length; columns the model does not read
    are ignored (a whole record may be sent)."""
    needed = list(dict.fromkeys(str(f.column) for f in head.config.input_features))
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
    if not next(iter(lengths), 0):
        raise InvalidArgument("no rows to predict", field="columns")
    return needed


def _texts(head: ServedHead, columns: dict[str, list]) -> dict[str, list[str]]:
    """Each text feature's texts, as `tunewire.features.split_texts` makes them from a table
    (a missing value is the feature's fill_value, then lowercased if asked), without building
    one: the request's values are already str or None."""
    out = {}
    for f in head.config.input_features:
        if f.type != "text":
            continue
        fill, lower = f.preprocessing.fill_value, f.preprocessing.lowercase
        values = [fill if v is None else str(v) for v in columns[str(f.column)]]
        out[f.name] = [v.lower() for v in values] if lower else values
    return out


@torch.no_grad()
def predict_rows(
    service: EmbedderService,
    head: ServedHead,
    columns: dict[str, list],
    cancelled: Callable[[], bool] | None = None,
) -> RowsPrediction:
    needed = _checked(head, columns)
    n = len(columns[needed[0]])
    x: dict[str, torch.Tensor] = {}
    if any(f.type != "text" for f in head.config.input_features):
        df = pd.DataFrame({c: columns[c] for c in needed})
        encoded = encode_inputs(head.config, head.input_metas, df)
        x = {k: torch.from_numpy(v) for k, v in encoded.items()}
    hits = misses = 0
    for feature, texts in _texts(head, columns).items():
        ref = head.encoders[feature]
        result = service.embed(ref.spec, texts, cancelled, write_behind=True)
        ref.check_fingerprint(result.fingerprint)
        x[feature] = torch.tensor(result.vectors, dtype=torch.float32)  # a copy: may be read-only
        hits, misses = hits + result.hits, misses + result.misses
    # One intra-op thread: a head is a few small matrices, and a second thread only woke an
    # OpenMP worker that then spun, 4.5 ms of CPU a single-row request (cpu_threads.py).
    with intra_op_threads(1):
        logits = head.model(x)
    _check_finite(logits, n)
    return RowsPrediction(th.decode_outputs(head.model, logits), n, hits, misses)


def _check_finite(logits: dict[str, torch.Tensor], n: int) -> None:
    """A row whose outputs are not finite numbers (a number far outside what the model was
    trained on overflows it: 1e308) is refused by its index, not answered as NaN, which no JSON
    answer can even hold."""
    for name, values in logits.items():
        finite = torch.isfinite(values.reshape(n, -1)).all(dim=1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0])
            raise InvalidArgument(
                f"row {row}: the model's output {name!r} is not a finite number for this row's "
                "values (a number far outside the range it was trained on?)",
                field="columns",
            )
