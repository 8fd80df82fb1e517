"""The embedder's domain logic, without grpc: specs in, numpy vectors out, through the cache.

Order of work for a request: dedupe its texts, look every distinct text up in the cache (before
touching the model lock, so hits never wait behind another client's batch), compute the misses in
token-budget batches shared with concurrent requests for the same model, write them back in one
transaction, and answer in the request's order.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import structlog
import torch

from services.embedder.batching import (DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_QUEUED_TOKENS,
                                        BatchQueue, RunKey)
from services.embedder.cache import CacheStats, EmbeddingCache, decode_vector, encode_vector
from services.embedder.encoder import Encoder
from services.embedder.fingerprint import (EmbeddingSettings, cache_key, fingerprint,
                                           tokenizer_identity, weights_identity)
from services.embedder.pooling import POOLING_MODES
from services.embedder.source import ModelSource, resolve
from tunewire.errors import InvalidArgument

log = structlog.get_logger(__name__)

OUTPUT_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
# Results travel in one gRPC message; stay clear of the 64 MiB limit.
DEFAULT_MAX_OUTPUT_BYTES = 48 * 1024 * 1024


@dataclass(frozen=True)
class EncoderSpec:
    """Everything besides the text that determines a vector (the proto's EncoderSpec)."""

    model: str
    revision: str = ""
    pooling: str = "mean"
    max_length: int = 0  # 0 = the model's limit
    normalize: bool = False
    dtype: str = "float32"
    layer: int = 0  # 0 or -1 = last; negative from the end; positive into hidden_states
    instruction: str = ""


class EmbedResult(NamedTuple):
    vectors: np.ndarray  # [len(texts), dim], request order
    hits: int  # distinct texts served from the cache
    misses: int  # distinct texts computed
    fingerprint: str


@dataclass(frozen=True)
class EncoderInfo:
    fingerprint: str
    dimension: int
    model_type: str
    max_length: int
    device: str


@dataclass
class _Loaded:
    """A loaded encoder with the identities its fingerprint uses, fixed at load time."""

    encoder: Encoder
    weights: str
    tokenizer: str
    signature: tuple  # (name, size, mtime) of the directory's files, to notice edits on disk
    queue: BatchQueue  # misses of every request for this model


def _signature(source: ModelSource) -> tuple:
    # Hub snapshots are immutable per commit; only local directories can change under us.
    if source.commit:
        return ()
    return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                        for p in source.path.iterdir() if p.is_file()))


class EncoderRegistry:
    """The loaded encoders, least recently used evicted beyond `max_loaded`."""

    def __init__(self, max_loaded: int = 2, device: torch.device | None = None,
                 max_queued_tokens: int = DEFAULT_MAX_QUEUED_TOKENS) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded must be >= 1")
        self.max_loaded = max_loaded
        self.device = device
        self.max_queued_tokens = max_queued_tokens
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _Loaded] = OrderedDict()
        self._loading: dict[tuple[str, str], threading.Lock] = {}

    def get(self, model: str, revision: str = "") -> _Loaded:
        key = (model, revision)
        entry = self._lookup(key)
        if entry is not None:
            return entry
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one thread loads a given model; others wait for it
            entry = self._lookup(key)
            if entry is not None:
                return entry
            entry = self._load(model, revision)
            with self._lock:
                self._entries[key] = entry
                while len(self._entries) > self.max_loaded:
                    (old, _), _ = self._entries.popitem(last=False)
                    log.info("encoder evicted", model=old)
            return entry

    def _lookup(self, key: tuple[str, str]) -> _Loaded | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
        if _signature(entry.encoder.source) != entry.signature:
            log.info("model files changed on disk, reloading", model=key[0])
            with self._lock:
                self._entries.pop(key, None)
            return None
        return entry

    def _load(self, model: str, revision: str) -> _Loaded:
        source = resolve(model, revision)
        signature = _signature(source)
        encoder = Encoder(source, self.device)
        entry = _Loaded(encoder, weights_identity(source), tokenizer_identity(source.path),
                        signature, BatchQueue(self.max_queued_tokens))
        log.info("encoder opened", model=model, model_type=encoder.model_type,
                 dimension=encoder.dimension, device=str(encoder.device))
        return entry

    def loaded(self) -> list[str]:
        with self._lock:
            return [model for model, _ in self._entries]


class EmbedderService:
    """Embeds texts with frozen encoders through the content-addressed cache."""

    def __init__(self, cache: EmbeddingCache, *, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 max_loaded_models: int = 2, device: torch.device | None = None,
                 max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
                 max_queued_tokens: int = DEFAULT_MAX_QUEUED_TOKENS,
                 registry: EncoderRegistry | None = None) -> None:
        """`registry` lets several services (or tests) share loaded models."""
        self.cache = cache
        self.max_batch_tokens = max_batch_tokens
        self.max_output_bytes = max_output_bytes
        self.registry = registry or EncoderRegistry(max_loaded_models, device, max_queued_tokens)
        self._counter_lock = threading.Lock()
        self.computed_texts = 0  # texts that went through a model since start
        self.batches = 0  # forward passes since start

    def preload(self, model: str, revision: str = "") -> None:
        """Open and load the weights of `model` now, so the first request does not pay for it."""
        self.registry.get(model, revision).encoder.load()

    def _settings(self, encoder: Encoder, spec: EncoderSpec) -> EmbeddingSettings:
        if spec.pooling not in POOLING_MODES:
            raise InvalidArgument(f"unknown pooling {spec.pooling!r}", field="encoder.pooling")
        if spec.dtype not in OUTPUT_DTYPES:
            raise InvalidArgument(f"unsupported output dtype {spec.dtype!r} (float32 or float16)",
                                  field="encoder.dtype")
        return EmbeddingSettings(
            pooling=spec.pooling, layer=encoder.normalise_layer(spec.layer),
            max_length=encoder.effective_max_length(spec.max_length), normalize=spec.normalize,
            compute_dtype=str(encoder.dtype).removeprefix("torch."), dtype=spec.dtype,
            instruction=spec.instruction)

    def info(self, spec: EncoderSpec) -> EncoderInfo:
        """Describe an encoder, loading its weights so that a broken model fails here, early."""
        entry = self.registry.get(spec.model, spec.revision)
        entry.encoder.load()
        settings = self._settings(entry.encoder, spec)
        return EncoderInfo(fingerprint=fingerprint(entry.weights, entry.tokenizer, settings),
                           dimension=entry.encoder.dimension,
                           model_type=entry.encoder.model_type, max_length=settings.max_length,
                           device=str(entry.encoder.device))

    def embed(self, spec: EncoderSpec, texts: list[str]) -> EmbedResult:
        entry = self.registry.get(spec.model, spec.revision)
        encoder = entry.encoder
        settings = self._settings(encoder, spec)
        fp = fingerprint(entry.weights, entry.tokenizer, settings)
        dtype = OUTPUT_DTYPES[spec.dtype]
        dim = encoder.dimension
        if len(texts) * dim * dtype.itemsize > self.max_output_bytes:
            raise InvalidArgument(
                f"{len(texts)} texts x {dim} dims of {spec.dtype} exceed the "
                f"{self.max_output_bytes} byte response limit: send fewer texts per request",
                field="texts")

        distinct = list(dict.fromkeys(texts))
        keys = [cache_key(fp, text) for text in distinct]
        matrix = np.empty((len(distinct), dim), dtype=dtype)
        missing: list[int] = []
        for i, value in enumerate(self.cache.get_many(keys)):
            vector = decode_vector(value) if value is not None else None
            if vector is None or vector.shape[0] != dim or vector.dtype != dtype:
                missing.append(i)
            else:
                matrix[i] = vector
        if missing:
            computed = self._compute(entry, [distinct[i] for i in missing], settings)
            matrix[missing] = computed.astype(dtype)
            self.cache.put_many((keys[i], encode_vector(matrix[i])) for i in missing)

        row = {text: i for i, text in enumerate(distinct)}
        vectors = matrix[[row[t] for t in texts]] if texts else matrix[:0]
        hits = len(distinct) - len(missing)
        log.debug("embedded", texts=len(texts), distinct=len(distinct), hits=hits,
                  misses=len(missing), fingerprint=fp[:12])
        return EmbedResult(vectors, hits, len(missing), fp)

    def _compute(self, entry: _Loaded, texts: list[str], settings: EmbeddingSettings
                 ) -> np.ndarray:
        """float32 vectors for `texts`, through the model's shared queue.

        The rows join every other request's rows for this model; each time this thread gets the
        model lock it runs the queue's next batch (which may be another request's) until its own
        rows are all done. One batch at a time per model, no thread of our own."""
        encoder, queue = entry.encoder, entry.queue
        ids = encoder.tokenize(texts, settings.max_length, settings.instruction)
        key = RunKey(settings.pooling, settings.layer, settings.normalize)
        request = queue.append(ids, key)
        try:
            while not request.done:
                with encoder.lock:
                    if request.done:
                        break
                    # Rows leave the queue only under this lock and are delivered before it is
                    # released, so our unfinished rows are still queued: a batch exists.
                    rows = queue.next_batch(self.max_batch_tokens)
                    run = rows[0].request.key  # one key per batch, maybe not ours
                    try:
                        vectors = encoder.run([row.ids for row in rows], pooling=run.pooling,
                                              layer=run.layer, normalize=run.normalize)
                    except Exception as exc:  # noqa: BLE001 - handed to every request in the batch
                        queue.fail(rows, exc)
                        continue
                    queue.deliver(rows, vectors.numpy())
                with self._counter_lock:
                    self.batches += 1
                    self.computed_texts += len(rows)
        finally:
            if not request.done:
                queue.cancel(request)  # interrupted: nobody computes rows nobody waits for
        return request.result()

    def cache_stats(self) -> CacheStats:
        return self.cache.stats()

    def close(self) -> None:
        self.cache.close()
