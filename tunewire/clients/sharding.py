"""Embedding across several embedder replicas, each text always sent to the same one.

Each replica owns its own LMDB cache (k8s/base/embedder.yaml), so a text must keep reaching the
replica that already holds its vector. The shard key is sha256(encoder spec, text) — the same
inputs as the server's cache key minus the weight fingerprint, which a client cannot know — and
`tunewire.clients.addresses.shard_for` picks the replica by rendezvous hashing (see that module
for why).

An address with commas (`embedder-0.embedder:50051,embedder-1.embedder:50051`) gives a
`ShardedEmbedderClient`; a single address the plain `EmbedderClient`.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tunewire.clients.addresses import shard_for
from tunewire.clients.embedder import EmbedderClient, EmbedResult, EncoderSpec
from tunewire.errors import TunewireError


def shard_key(spec: EncoderSpec, text: str) -> bytes:
    spec_bytes = spec.to_proto().SerializeToString(deterministic=True)
    return hashlib.sha256(spec_bytes + b"\0" + text.encode("utf-8")).digest()


class ShardedEmbedderClient:
    """The EmbedderClient interface over several replicas."""

    def __init__(self, replicas: list[str]) -> None:
        if len(replicas) < 2:
            raise TunewireError("a sharded client needs at least two replicas", field="embedder")
        self.replicas = list(replicas)
        self.clients = {r: EmbedderClient(r) for r in self.replicas}

    def partition(self, texts: list[str], spec: EncoderSpec) -> dict[str, list[int]]:
        """Replica → the indexes of the texts it owns."""
        groups: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            groups.setdefault(shard_for(shard_key(spec, text), self.replicas), []).append(i)
        return groups

    def embed(
        self, texts: list[str], spec: EncoderSpec, timeout: float | None = None
    ) -> EmbedResult:
        return self._fan_out(texts, spec, lambda c, t, _p: c.embed(t, spec, timeout=timeout))

    def embed_many(
        self,
        texts: list[str],
        spec: EncoderSpec,
        batch_size: int = 256,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> EmbedResult:
        return self._fan_out(
            texts,
            spec,
            lambda c, t, p: c.embed_many(
                t, spec, batch_size=batch_size, progress=p, cancelled=cancelled
            ),
            progress,
        )

    def _fan_out(
        self,
        texts: list[str],
        spec: EncoderSpec,
        call,
        progress: Callable[[int, int], None] | None = None,
    ) -> EmbedResult:
        if not texts:
            raise TunewireError("no texts to embed", field="texts")
        groups = self.partition(texts, spec)
        done: dict[str, int] = {r: 0 for r in groups}
        lock = threading.Lock()

        def report(replica: str) -> Callable[[int, int], None]:
            def inner(n: int, _total: int) -> None:
                with lock:
                    done[replica] = n
                    if progress is not None:
                        progress(sum(done.values()), len(texts))

            return inner

        with ThreadPoolExecutor(max_workers=len(groups)) as pool:
            futures = {
                r: pool.submit(call, self.clients[r], [texts[i] for i in idx], report(r))
                for r, idx in groups.items()
            }
            results = {r: f.result() for r, f in futures.items()}
        dim = next(iter(results.values())).vectors.shape[1]
        dtype = next(iter(results.values())).vectors.dtype
        out = np.empty((len(texts), dim), dtype=dtype)
        for r, idx in groups.items():
            out[idx] = results[r].vectors
        fingerprints = {res.fingerprint for res in results.values()}
        if len(fingerprints) > 1:
            raise TunewireError(
                "embedder replicas disagree on the encoder fingerprint (different weights?)",
                field="embedder",
                reason="FAILED_PRECONDITION",
            )
        return EmbedResult(
            out,
            sum(r.cache_hits for r in results.values()),
            sum(r.cache_misses for r in results.values()),
            fingerprints.pop(),
        )

    def info(self, spec: EncoderSpec):
        return self.clients[self.replicas[0]].info(spec)

    def cache_stats(self) -> dict[str, object]:
        """Per replica: each owns its cache."""
        return {r: c.cache_stats() for r, c in self.clients.items()}

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


def embedder_client(address: str) -> EmbedderClient | ShardedEmbedderClient:
    replicas = [a.strip() for a in address.split(",") if a.strip()]
    if len(replicas) > 1:
        return ShardedEmbedderClient(replicas)
    return EmbedderClient(address)
