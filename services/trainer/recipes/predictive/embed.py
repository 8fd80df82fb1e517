"""Frozen text features → vectors, through the embedder and its cache.

One streamed embed call per text feature over the distinct texts of every split, so a text shared
by splits (or by jobs) is computed once. The trainer never loads a frozen encoder itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tunewire.errors import FailedPrecondition
from tunewire.heads import EncoderRef


@dataclass
class EmbedStats:
    texts: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    seconds: float = 0.0
    per_feature: dict[str, dict] = field(default_factory=dict)


def embed_frozen(
    embedder,
    refs: list[EncoderRef],
    texts: dict[str, dict[str, list[str]]],
    *,
    check_fingerprint: bool = False,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], EmbedStats]:
    """`texts`: split → feature → texts. Returns split → feature → float32 [n, d] and the
    stats; fills each ref's fingerprint and dimension (or, with `check_fingerprint`, insists that
    the embedder still has the fingerprint the model was trained on)."""
    if embedder is None:
        raise FailedPrecondition(
            "no embedder is configured for this trainer", field="input_features.encoder"
        )
    out: dict[str, dict[str, np.ndarray]] = {split: {} for split in texts}
    stats = EmbedStats()
    started = time.monotonic()
    for ref in refs:
        unique = list(dict.fromkeys(t for per in texts.values() for t in per[ref.feature]))
        result = embedder.embed_many(unique, ref.spec, progress=progress, cancelled=cancelled)
        if check_fingerprint:
            ref.check_fingerprint(result.fingerprint)
        ref.fingerprint = result.fingerprint
        ref.dimension = int(result.vectors.shape[1])
        index = {t: i for i, t in enumerate(unique)}
        vectors = result.vectors.astype(np.float32, copy=False)
        for split, per in texts.items():
            out[split][ref.feature] = vectors[[index[t] for t in per[ref.feature]]]
        stats.texts += len(unique)
        stats.cache_hits += result.cache_hits
        stats.cache_misses += result.cache_misses
        stats.per_feature[ref.feature] = {
            "texts": len(unique),
            "cache_hits": result.cache_hits,
            "cache_misses": result.cache_misses,
        }
    stats.seconds = time.monotonic() - started
    return out, stats
