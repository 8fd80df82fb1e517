"""The embedder's domain logic, without grpc: specs in, numpy vectors out, through the cache.

Order of work for a request: dedupe its texts, look every distinct text up in the cache (before
touching the model lock, so hits never wait behind another client's batch), claim the misses that
no concurrent request is already computing (and wait for those that one is), compute the claimed
ones in token-budget batches shared with concurrent requests for the same model, write them back
in one transaction, and answer in the request's order. A request of many texts answered wholly
from the cache is stored whole as well, so the same request again costs one read (cache.py).

The cache is shared by every caller (`cache_scope` "shared"), which tells one principal what
another embedded: a hit shows in `cache_hits` and in latency. With `cache_scope` "principal" the
cache keys (entries, whole answers, hot answers, in-flight claims) include the calling principal
(`tunewire.auth.current_principal`), so a principal hits only what it embedded itself, at the
price of computing the same text once per principal. A server without tokens has one principal.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import structlog
import torch

from services.embedder.batching import (
    DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_QUEUED_TOKENS,
    BatchQueue,
    PendingRequest,
    RunKey,
)
from services.embedder.cache import CacheStats, EmbeddingCache, encode_batch, encode_vector
from services.embedder.cpu_threads import PARALLEL_PASSES, pass_budget, split_passes
from services.embedder.encoder import (
    Encoder,
    Launched,
    collect_dropped,
    compile_by_default,
    froze_at_load,
)
from services.embedder.fingerprint import (
    EmbeddingSettings,
    batch_key,
    cache_keys,
    encode_texts,
    fingerprint,
    loaded_key,
    tokenizer_identity,
    weights_identity,
)
from services.embedder.hot_answers import DEFAULT_HOT_ANSWER_BYTES, HotAnswers
from services.embedder.hot_vectors import (
    BUSY,
    DEFAULT_HOT_VECTOR_BYTES,
    HotVectors,
    joined_texts,
)
from services.embedder.inflight import Flight, InFlight
from services.embedder.landing import Lander
from services.embedder.launching import Launcher
from services.embedder.shapes import EncoderShapes, FileHashes
from services.embedder.source import ModelSource, resolve
from tunewire.auth import current_principal
from tunewire.devices import chosen_compute_dtype, default_device
from tunewire.encoder_spec import EncoderSpec
from tunewire.errors import Cancelled, InvalidArgument, ResourceExhausted
from tunewire.model_roots import ModelRoots
from tunewire.pooling import POOLING_MODES

# Who may hit whose cache entries (module docstring).
SHARED, PRINCIPAL = "shared", "principal"
CACHE_SCOPES = (SHARED, PRINCIPAL)

log = structlog.get_logger(__name__)

OUTPUT_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
# Results travel in one gRPC message; stay clear of the 64 MiB limit.
DEFAULT_MAX_OUTPUT_BYTES = 48 * 1024 * 1024
# How many requests' hashes `_answer_kept` remembers to tell a replay from a first request.
SEEN_REQUESTS = 65536
# Requests of at least this many texts, answered wholly from the cache, are stored whole too
# (see cache.py); smaller ones gain little from it.
BATCH_ENTRY_MIN_TEXTS = 64


class RecentHashes:
    """The hashes of the last `size` keys put, first in first out (a collision, or two
    requests of one sketch, only makes a first request look like a replay: its answer is kept
    in memory, never wrong)."""

    def __init__(self, size: int) -> None:
        self._order: deque[int] = deque()
        self._set: set[int] = set()
        self._size = size
        self._lock = threading.Lock()

    def put(self, key: Hashable) -> bool:
        """Remember `key`; whether it was remembered already."""
        value = hash(key)
        with self._lock:
            if value in self._set:
                return True
            self._set.add(value)
            self._order.append(value)
            if len(self._order) > self._size:
                self._set.discard(self._order.popleft())
            return False


# Bytes of a request's texts (wire form) its hot-answer sketch samples, evenly spread: its
# ends alone are alike in every request of a data set whose texts share a template.
_SKETCH_BYTES = 256


class _HotKey(NamedTuple):
    """Where a request's whole answer is kept in memory (`HotAnswers`), and its sketch: the
    texts' size and bytes sampled through them, which tell a request never seen (the same texts
    in another order) without hashing all its bytes, and which `RecentHashes` remembers."""

    key: tuple
    sketch: tuple

    @classmethod
    def of(cls, key_fp: str, render: Any, wire: bytes) -> _HotKey:
        return cls(
            (key_fp, render, wire),
            (key_fp, render, len(wire), wire[:: max(len(wire) // _SKETCH_BYTES, 1)]),
        )

    def put(self, hot: HotAnswers, rendered: Any, distinct: int) -> None:
        hot.put(self.key, rendered, distinct, key_bytes=len(self.key[2]), sketch=self.sketch)


class EmbedResult(NamedTuple):
    vectors: np.ndarray  # [len(texts), dim], request order (read-only when stored whole)
    hits: int  # distinct texts served from the cache
    misses: int  # distinct texts computed
    fingerprint: str
    # Set only for a render marked `takes_rows`: the answer is then vectors[rows] (vectors
    # being kept rows, valid only during the call), gathered by the render into its message.
    rows: np.ndarray | None = None

    def gathered(self) -> EmbedResult:
        """The result with vectors of its own, in request order."""
        if self.rows is None:
            return self._replace(vectors=self.vectors.copy())
        return self._replace(vectors=self.vectors.take(self.rows, axis=0), rows=None)


@dataclass(frozen=True)
class ComputeCounters:
    """Since the service started: forward passes, texts computed, forward passes that held rows
    of several requests (shared batches), queued texts dropped because their client left, and
    the computed texts' tokens (with forward passes: how large the batches were)."""

    forward_passes: int
    computed_texts: int
    shared_batches: int
    dropped_texts: int
    computed_tokens: int = 0  # the computed texts' tokens (special tokens included)


@dataclass(frozen=True)
class EncoderInfo:
    fingerprint: str
    dimension: int
    model_type: str
    max_length: int
    device: str
    compute_dtype: str  # what the forward passes run in (also in the fingerprint)


@dataclass
class _Loaded:
    """A loaded encoder with the identities its fingerprint uses, fixed at load time."""

    encoder: Encoder
    weights: str
    tokenizer: str
    signature: tuple  # (name, size, mtime) of the directory's files, to notice edits on disk
    queue: BatchQueue  # misses of every request for this model
    checked_at: float = 0.0  # time.monotonic() of the last signature check
    # On a GPU, batches launched whose vectors are not fetched yet, and their tokens
    # (`in_flight_change`).
    in_flight: int = 0
    in_flight_tokens: int = 0
    _in_flight_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # On a GPU, fetches launched batches' vectors and delivers them (landing.py).
    lander: Lander = field(default_factory=Lander, repr=False)
    # On a GPU, each service's launcher of this model's batches (launching.py), by id(service).
    launchers: dict = field(default_factory=dict, repr=False)

    def in_flight_change(self, step: int, tokens: int = 0) -> None:
        with self._in_flight_lock:
            self.in_flight += step
            self.in_flight_tokens += step * tokens


# How often a loaded local model's files are compared with the disk: listing and stat-ing them
# on every request cost ~0.17 ms a request (2-core VM), a quarter of a warm replay's server
# work; a model replaced on disk is noticed within this many seconds instead.
SIGNATURE_CHECK_SECONDS = 1.0


def _signature(source: ModelSource) -> tuple:
    # Hub snapshots are immutable per commit; only local directories can change under us.
    if source.commit:
        return ()
    stats = ((p.name, p.stat()) for p in source.path.iterdir() if p.is_file())
    return tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in stats))


class EncoderRegistry:
    """The loaded encoders, least recently used evicted beyond `max_loaded`."""

    def __init__(
        self,
        max_loaded: int = 2,
        device: torch.device | None = None,
        max_queued_tokens: int = DEFAULT_MAX_QUEUED_TOKENS,
        varlen: bool = True,
        compile: bool | None = None,
        roots: ModelRoots | None = None,
        cuda_graphs: bool = False,
        shapes: EncoderShapes | None = None,
        hashes: FileHashes | None = None,
        compute_dtype: str = "auto",
    ) -> None:
        """`varlen` False keeps every model on the padded path (no packed batches); `compile`
        compiles each model's blocks at load, None where the device is a GPU (see
        `compile_by_default`); `roots` what may be loaded (default: any model); `cuda_graphs`
        replays packed batches as CUDA graphs per shape bucket on a GPU (graphs.py); `shapes`
        and `hashes` keep what opening an encoder's files said, for the next process
        (shapes.py); `compute_dtype` what forward passes run in (tunewire.devices.COMPUTE_DTYPES:
        "auto" is bf16 on a GPU, fp32 on a CPU; "bfloat16" on a CPU is an opt-in whose vectors,
        fingerprinted apart, differ slightly from fp32's)."""
        if max_loaded < 1:
            raise ValueError("max_loaded must be >= 1")
        self.max_loaded = max_loaded
        self.device = device
        self.max_queued_tokens = max_queued_tokens
        self.varlen = varlen
        self.compile = compile
        self.cuda_graphs = cuda_graphs
        self.shapes = shapes
        self.hashes = hashes
        self.compute_dtype = compute_dtype
        self.roots = roots or ModelRoots.anywhere()
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _Loaded] = OrderedDict()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        # Encoders named at start (--model NAME=PATH): NAME → PATH.
        self.names: dict[str, str] = {}

    def get(self, model: str, revision: str = "") -> _Loaded:
        model = self.names.get(model, model)
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
            frozen = False
            with self._lock:
                self._entries[key] = entry
                while len(self._entries) > self.max_loaded:
                    (old, _), evicted = self._entries.popitem(last=False)
                    frozen |= froze_at_load(evicted.encoder)
                    log.info("encoder evicted", model=old)
            if frozen:
                collect_dropped()
            return entry

    def peek(self, model: str, revision: str = "") -> _Loaded | None:
        """The open encoder, if open and its files checked lately; never loads nor reads a
        file (for an event loop: `get` does both when needed)."""
        with self._lock:
            entry = self._entries.get((self.names.get(model, model), revision))
        if entry is None or time.monotonic() - entry.checked_at >= SIGNATURE_CHECK_SECONDS:
            return None
        return entry

    def _lookup(self, key: tuple[str, str]) -> _Loaded | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
        now = time.monotonic()
        if now - entry.checked_at < SIGNATURE_CHECK_SECONDS:
            return entry
        entry.checked_at = now
        if _signature(entry.encoder.source) != entry.signature:
            log.info("model files changed on disk, reloading", model=key[0])
            with self._lock:
                self._entries.pop(key, None)
            if froze_at_load(entry.encoder):
                collect_dropped()
            return None
        return entry

    def _load(self, model: str, revision: str) -> _Loaded:
        source = resolve(model, revision, self.roots)
        signature = _signature(source)
        device = self.device or default_device()
        weights = weights_identity(source, self.hashes)
        tokenizer = tokenizer_identity(source.path)
        shape = self.shapes.get(weights, tokenizer) if self.shapes is not None else None
        encoder = Encoder(
            source,
            device,
            varlen=None if self.varlen else False,
            compile=compile_by_default(device) if self.compile is None else self.compile,
            graphs=self.cuda_graphs,
            shape=shape,
            dtype=chosen_compute_dtype(device, self.compute_dtype),
        )
        if shape is None and self.shapes is not None:
            self.shapes.put(weights, tokenizer, encoder.shape)
        entry = _Loaded(
            encoder,
            weights,
            tokenizer,
            signature,
            BatchQueue(self.max_queued_tokens),
            time.monotonic(),
        )
        log.info(
            "encoder opened",
            model=model,
            model_type=encoder.model_type,
            dimension=encoder.dimension,
            device=str(encoder.device),
        )
        return entry

    def loaded(self) -> list[str]:
        with self._lock:
            return [model for model, _ in self._entries]

    def entries(self) -> list[_Loaded]:
        with self._lock:
            return list(self._entries.values())


def takes_rows(render: Callable[[EmbedResult], Any]) -> Callable[[EmbedResult], Any]:
    """Mark `render` as reading `EmbedResult.rows`: kept vectors then reach it as the kept
    rows and their order, for it to gather once, straight into what it sends (other renders
    get the vectors gathered)."""
    render.takes_rows = True
    return render


def _render_rows(
    render: Callable[[EmbedResult], Any] | None, result: EmbedResult
) -> Callable[[np.ndarray, np.ndarray, int], tuple[Any, int]]:
    """What `HotVectors.answer` calls with the kept rows: `render` (default: the result) of
    `result` holding them, and their count of distinct texts."""

    def use(matrix: np.ndarray, rows: np.ndarray, distinct: int) -> tuple[Any, int]:
        kept = result._replace(vectors=matrix, hits=distinct, rows=rows)
        if not getattr(render, "takes_rows", False):
            kept = kept.gathered()
        return (kept if render is None else render(kept)), distinct

    return use


class Answered(NamedTuple):
    """A request answered by `begin` already (its whole answer was in the cache), rendered."""

    rendered: Any

    def finish(self, cancelled: Callable[[], bool] | None = None) -> Any:
        return self.rendered


class _Prepared(NamedTuple):
    """A request's lookup keys (EmbedderService._prepare)."""

    settings: EmbeddingSettings
    fp: str  # the encoder's fingerprint, as the caller sees it
    key_fp: str  # the fingerprint its cache keys are made of (the caller's scope)
    dtype: np.dtype
    dim: int
    wire: bytes | None  # the texts' wire form, for a request that may be stored whole


@dataclass
class EmbedJob:
    """A request after its cache lookup: `finish` computes the texts it owns, waits for those
    other requests are computing, and answers in request order."""

    service: EmbedderService
    entry: _Loaded
    settings: EmbeddingSettings
    fingerprint: str
    texts: list[str]
    distinct: list[str]
    keys: list[bytes]
    matrix: np.ndarray  # [len(distinct), dim], cache hits filled in
    owned: list[int]  # rows of `distinct` this job computes
    waiting: list[tuple[int, Flight]]  # rows another request is computing
    whole: bytes | None = None  # all hits: store the answer whole under this key
    render: Callable[[EmbedResult], Any] | None = None  # what `finish` returns; None: the result
    key_fingerprint: str = ""  # what its cache keys are made of (the caller's scope)
    write_behind: bool = False  # computed vectors committed by the cache's writer thread

    def finish(self, cancelled: Callable[[], bool] | None = None) -> Any:
        matrix = self.matrix
        computed = self._compute(self.owned, cancelled, claimed=True)
        retry: list[int] = []
        for row, flight in self.waiting:
            vector = flight.wait(cancelled or (lambda: False))
            if vector is None:  # its owner failed or left: compute it here
                retry.append(row)
            else:
                matrix[row] = vector
        computed += self._compute(retry, cancelled, claimed=False)

        if len(self.distinct) == len(self.texts):  # no duplicates: already in request order
            vectors = matrix
        else:
            index = {text: i for i, text in enumerate(self.distinct)}
            vectors = matrix[[index[t] for t in self.texts]] if self.texts else matrix[:0]
        hits = len(self.distinct) - computed
        if self.render is None:  # the caller gets `matrix` itself (and may change it)
            self.service.hot_vectors.put(self.key_fingerprint, self.distinct, matrix)
        else:  # rendered here into what is sent: kept behind the answer (put_behind)
            self.service.hot_vectors.put_behind(self.key_fingerprint, self.distinct, matrix)
        if self.whole is not None:
            self.service.cache.put_later(self.whole, encode_batch(vectors, len(self.distinct)))
        log.debug(
            "embedded",
            texts=len(self.texts),
            distinct=len(self.distinct),
            hits=hits,
            misses=computed,
            shared=len(self.waiting) - len(retry),
            fingerprint=self.fingerprint[:12],
        )
        result = EmbedResult(vectors, hits, computed, self.fingerprint)
        return result if self.render is None else self.render(result)

    def _compute(self, rows: list[int], cancelled: Callable[[], bool] | None, claimed: bool) -> int:
        """Compute `rows`, store them in the cache, and (if `claimed`) hand them to waiters."""
        if not rows:
            return 0
        service, keys = self.service, [self.keys[i] for i in rows]
        try:
            vectors = service._compute(
                self.entry, [self.distinct[i] for i in rows], self.settings, cancelled
            )
            self.matrix[rows] = vectors.astype(self.matrix.dtype)
            entries = zip(keys, map(encode_vector, self.matrix[rows]))
            if self.write_behind:
                service.cache.put_many_later(entries)
            else:
                service.cache.put_many(entries)
        except BaseException:
            if claimed:
                service._inflight.release(keys, None)
            raise
        if claimed:
            service._inflight.release(keys, self.matrix[rows])
        return len(rows)


class EmbedderService:
    """Embeds texts with frozen encoders through the content-addressed cache."""

    def __init__(
        self,
        cache: EmbeddingCache,
        *,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        max_loaded_models: int = 2,
        device: torch.device | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        max_queued_tokens: int = DEFAULT_MAX_QUEUED_TOKENS,
        registry: EncoderRegistry | None = None,
        varlen: bool = True,
        compile: bool | None = None,
        hot_answer_bytes: int = DEFAULT_HOT_ANSWER_BYTES,
        roots: ModelRoots | None = None,
        cache_scope: str = SHARED,
        hot_vector_bytes: int = DEFAULT_HOT_VECTOR_BYTES,
        cuda_graphs: bool = False,
        compute_dtype: str = "auto",
    ) -> None:
        """`registry` lets several services (or tests) share loaded models; `varlen` False keeps
        every model padded; `compile`, `cuda_graphs` and `compute_dtype` as EncoderRegistry's;
        `hot_answer_bytes` bounds the whole answers kept in memory as sent (hot_answers.py),
        `hot_vector_bytes` the vectors kept by text (hot_vectors.py); `cache_scope` "principal"
        keeps each principal's cache entries apart (module docstring)."""
        if cache_scope not in CACHE_SCOPES:
            raise ValueError(f"cache scope must be one of {', '.join(CACHE_SCOPES)}")
        self.cache_scope = cache_scope
        self.cache = cache
        self.hot = HotAnswers(hot_answer_bytes)
        self.hot_vectors = HotVectors(hot_vector_bytes)
        self.max_batch_tokens = max_batch_tokens
        self.max_output_bytes = max_output_bytes
        self.registry = registry or EncoderRegistry(
            max_loaded_models,
            device,
            max_queued_tokens,
            varlen,
            compile,
            roots,
            cuda_graphs,
            EncoderShapes(cache),
            FileHashes(cache),
            compute_dtype,
        )
        self._counter_lock = threading.Lock()
        self.computed_texts = 0  # texts that went through a model since start
        self.computed_tokens = 0  # their tokens
        self.batches = 0  # forward passes since start
        self.shared_batches = 0  # forward passes holding rows of more than one request
        self._inflight = InFlight()
        # On a CPU, threads that run a request's passes beside its own (`_help`).
        self._helpers = ThreadPoolExecutor(PARALLEL_PASSES - 1, thread_name_prefix="cpu-pass")
        # Requests answered lately, by the hash of their hot-answer key: which are replays.
        self._seen = RecentHashes(SEEN_REQUESTS)
        # False: on a GPU request threads launch batches, the thread that launched one waits
        # for it and delivers it, and a batch short of the budget goes out whenever a launch
        # slot is free, as until 2026-12-03 (with `BatchQueue.arrival_order` False:
        # bench/embedder_throughput.py's rows "as before"). True: the model's launcher
        # launches (launching.py) and its lander delivers (landing.py).
        self.landers = True
        # On a GPU, the next batch's least tokens double with the tokens on the device
        # (`_least_tokens`); False: half the budget, as until 2026-12-03.
        self.ramp = True

    def _scoped(self, fp: str) -> str:
        """The fingerprint cache keys are made from: `fp` itself when the cache is shared, else
        one of the calling principal's own."""
        name = current_principal().name if self.cache_scope == PRINCIPAL else ""
        if not name:
            return fp
        return hashlib.sha256(f"principal\n{name}\n{fp}".encode()).hexdigest()

    def preload(self, model: str, revision: str = "") -> None:
        """Open and load the weights of `model` now, so the first request does not pay for it."""
        self.registry.get(model, revision).encoder.load()

    def _settings(self, encoder: Encoder, spec: EncoderSpec) -> EmbeddingSettings:
        if spec.pooling not in POOLING_MODES:
            raise InvalidArgument(f"unknown pooling {spec.pooling!r}", field="encoder.pooling")
        if spec.dtype not in OUTPUT_DTYPES:
            raise InvalidArgument(
                f"unsupported output dtype {spec.dtype!r} (float32 or float16)",
                field="encoder.dtype",
            )
        return EmbeddingSettings(
            pooling=spec.pooling,
            layer=encoder.normalise_layer(spec.layer),
            max_length=encoder.effective_max_length(spec.max_length),
            normalize=spec.normalize,
            compute_dtype=str(encoder.dtype).removeprefix("torch."),
            dtype=spec.dtype,
            instruction=spec.instruction,
        )

    def fingerprint(self, spec: EncoderSpec) -> str:
        """The fingerprint vectors under `spec` are cached with; reads config and tokenizer
        only (a same-host reader derives its cache keys from it, no weights needed)."""
        entry = self.registry.get(spec.model, spec.revision)
        return fingerprint(entry.weights, entry.tokenizer, self._settings(entry.encoder, spec))

    def info(self, spec: EncoderSpec) -> EncoderInfo:
        """Describe an encoder, loading its weights so that a broken model fails here, early -
        unless files of the same content (weights and tokenizer identities) loaded in this
        cache's embedder before: a job whose texts are all cached then needs no weights at all
        (loading them was most of a warm job's time on a CPU)."""
        entry = self.registry.get(spec.model, spec.revision)
        marker = loaded_key(entry.weights, entry.tokenizer)
        if not self.cache.contains(marker):
            entry.encoder.load()
            try:
                self.cache.put_many([(marker, b"1")])
            except ResourceExhausted as exc:  # an optimisation only: describe it all the same
                log.warning("loaded marker not stored", error=exc.message)
        settings = self._settings(entry.encoder, spec)
        return EncoderInfo(
            fingerprint=fingerprint(entry.weights, entry.tokenizer, settings),
            dimension=entry.encoder.dimension,
            model_type=entry.encoder.model_type,
            max_length=settings.max_length,
            device=str(entry.encoder.device),
            compute_dtype=settings.compute_dtype,
        )

    def embed(
        self,
        spec: EncoderSpec,
        texts: list[str],
        cancelled: Callable[[], bool] | None = None,
        write_behind: bool = False,
    ) -> EmbedResult:
        """Vectors for `texts` in order; `cancelled` says when the caller went away (its texts
        not yet computed are then dropped and Cancelled is raised).

        `write_behind`: the computed vectors enter the cache from its writer thread, after this
        returns (they are read from memory until then), for a caller that uses the vectors
        itself - online prediction - where the commit's fsync was a large part of a cold
        request. Embed and StreamEmbed keep the synchronous write: a same-host trainer reads
        the file directly once they answer."""
        job = self.begin(spec, texts)
        if isinstance(job, EmbedJob):
            job.write_behind = write_behind
        return job.finish(cancelled)

    def begin(
        self,
        spec: EncoderSpec,
        texts: Sequence[str],
        render: Callable[[EmbedResult], Any] | None = None,
        texts_wire: bytes | memoryview | None = None,
        joined: bytes | None = None,
        memory_checked: bool = False,
    ) -> EmbedJob | Answered:
        """Validate, look every distinct text up in the cache and claim the misses that no other
        request is computing. Cheap (no model work); a stream calls it in request order, so a
        later request waits for an earlier one's texts instead of computing them again. The
        caller must call `finish` on the job (which releases its claims).

        `finish` returns `render(result)` (default: the EmbedResult). A whole answer found in
        the cache is rendered here, inside the cache's read transaction, from a view of its
        memory map that is valid only during the call: `render` copies the vectors once,
        into whatever the caller sends, and must not block.

        `texts_wire` is `texts` in wire form (fingerprint.encode_texts) when the caller has it,
        as a server does: a replay is then looked up without turning its texts into strings
        (`texts` may be a lazy sequence, read only when the whole answer is not stored).
        `joined` is `texts` joined by NUL as UTF-8 when the caller has it (`EmbedRequest.joined`):
        a request whose texts are all kept in `hot_vectors` is then answered without turning
        them into strings. `memory_checked`: `answer_in_memory` found no answer for it just
        before (not looked for again)."""
        entry = self.registry.get(spec.model, spec.revision)
        req = self._prepare(entry, spec, texts, texts_wire)
        if not memory_checked:
            answered = self._from_memory(req, texts, render, joined)
            if answered is not None:
                return answered
        settings, fp, key_fp, dtype, dim, wire = req
        whole = None
        texts = list(texts)
        if wire is not None:
            whole = batch_key(key_fp, wire)
            found = self.cache.read_batch(
                whole,
                dtype,
                dim,
                len(texts),
                lambda vectors, distinct: (
                    (render or EmbedResult.gathered)(EmbedResult(vectors, distinct, 0, fp)),
                    distinct,
                ),
            )
            if found is not None:
                _HotKey.of(key_fp, render, wire).put(self.hot, *found)
                return Answered(found[0])
        distinct = list(dict.fromkeys(texts))
        keys = cache_keys(key_fp, distinct)
        matrix, missing = self.cache.get_matrix(keys, dtype, dim)
        owned, waiting = self._inflight.claim([keys[i] for i in missing])
        if wire is not None:
            self._seen.put(_HotKey.of(key_fp, render, wire).sketch)
        return EmbedJob(
            self,
            entry,
            settings,
            fp,
            texts,
            distinct,
            keys,
            matrix,
            [missing[i] for i in owned],
            [(missing[i], f) for i, f in waiting],
            whole if not missing else None,
            render,
            key_fp,
        )

    def answer_in_memory(
        self,
        spec: EncoderSpec,
        texts: Sequence[str],
        render: Callable[[EmbedResult], Any],
        texts_wire: bytes | memoryview,
        joined: bytes,
    ) -> Answered | object | None:
        """`begin`'s answer when memory holds it (hot answers, or every text in `hot_vectors`),
        else None (then `begin(..., memory_checked=True)`). Never blocks on files, a model or a
        put of kept vectors: where it cannot look - an encoder not open or due for its files'
        check (once a second), kept vectors being written by a first read's requests - it
        gives `hot_vectors.BUSY`, and `begin` looks in memory itself (a request answered from
        memory a moment ago must not be read from the cache's file text by text, and stored
        whole, for want of a look). For a server's event loop, where a thread's hop cost as
        much as a kept answer's gather."""
        entry = self.registry.peek(spec.model, spec.revision)
        if entry is None:
            return BUSY
        req = self._prepare(entry, spec, texts, texts_wire)
        return self._from_memory(req, texts, render, joined, wait=False)

    def _prepare(
        self,
        entry: _Loaded,
        spec: EncoderSpec,
        texts: Sequence[str],
        texts_wire: bytes | memoryview | None,
    ) -> _Prepared:
        """What a request's lookups need: its fingerprints, output type and texts' wire form
        (for a request large enough to be stored whole); refuses an answer over the limit."""
        settings = self._settings(entry.encoder, spec)
        fp = fingerprint(entry.weights, entry.tokenizer, settings)
        dtype = OUTPUT_DTYPES[spec.dtype]
        dim = entry.encoder.dimension
        if len(texts) * dim * dtype.itemsize > self.max_output_bytes:
            raise InvalidArgument(
                f"{len(texts)} texts x {dim} dims of {spec.dtype} exceed the "
                f"{self.max_output_bytes} byte response limit: send fewer texts per request",
                field="texts",
            )
        wire = None
        if len(texts) >= BATCH_ENTRY_MIN_TEXTS:
            # bytes, not a view: a memoryview compares with bytes item by item (~0.7 ms here).
            wire = encode_texts(texts) if texts_wire is None else bytes(texts_wire)
        # The fingerprint cache keys are made of; `fp` is what the caller sees.
        return _Prepared(settings, fp, self._scoped(fp), dtype, dim, wire)

    def _from_memory(
        self,
        req: _Prepared,
        texts: Sequence[str],
        render: Callable[[EmbedResult], Any] | None,
        joined: bytes | None,
        wait: bool = True,
    ) -> Answered | object | None:
        """The answer from hot answers or `hot_vectors`, rendered; None if neither holds it
        (unless `wait`, `hot_vectors.BUSY` while it is being written)."""
        hot_key = None if req.wire is None else _HotKey.of(req.key_fp, render, req.wire)
        if hot_key is not None:
            # A replay is found by its texts' bytes (a dict compares them whole), which costs
            # less than the sha256 of the whole-answer key, needed only when it is not hot.
            hot = self.hot.get(*hot_key)
            if hot is not None:
                self.cache.count_hits(hot.distinct)
                return Answered(hot.rendered)
        if joined is None:
            joined = joined_texts(list(texts))
        if joined is None:
            return None
        # Every text read or computed lately: no sha256, no LMDB, rendered from kept rows.
        kept = self.hot_vectors.answer(
            req.key_fp,
            joined,
            len(texts),
            _render_rows(render, EmbedResult(None, 0, 0, req.fp)),
            wait,
        )
        if kept is None or kept is BUSY:
            return kept
        return Answered(self._answer_kept(*kept, hot_key))

    def _answer_kept(self, rendered: Any, distinct: int, hot_key: _HotKey | None) -> Any:
        """The answer to a request whose every text is in `hot_vectors`, counted as cache hits.
        Kept as sent (hot answers, under `hot_key`) only when the same request came before: a
        replay then costs nothing from its next time on, while a request seen once (a data set
        in a new order every epoch) keeps nothing - holding a new 2 MiB a chunk cost a page fault
        for every 4 KiB of each such answer. Not stored whole in the cache: the sha256 of its key
        would cost about what this answer did."""
        self.cache.count_hits(distinct)
        if hot_key is not None and self._seen.put(hot_key.sketch):
            hot_key.put(self.hot, rendered, distinct)
        return rendered

    def _compute(
        self,
        entry: _Loaded,
        texts: list[str],
        settings: EmbeddingSettings,
        cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """float32 vectors for `texts`, through the model's shared queue.

        The texts are tokenised in chunks on the encoder's tokenizer threads, and each chunk's
        rows join every other request's rows for this model as it arrives; once a batch's worth
        of tokens is queued, this thread starts running batches while later chunks are still
        being tokenised. On a GPU the model's launcher thread launches the queue's batches
        (launching.py) and its lander delivers them (landing.py) while this thread queues its
        rows and waits. On a CPU, each time this thread gets the model lock it takes the queue's
        next batch (which may be another request's) and runs it (`_run_batch`: a few passes at
        once), until its own rows are all done. `cancelled` (the client went away) drops this
        request's rows and raises Cancelled."""
        encoder, queue = entry.encoder, entry.queue
        chunks = encoder.tokenize_chunks(texts, settings.max_length, settings.instruction)
        packed = encoder.packed_batches
        request = queue.open(
            len(texts), RunKey(settings.pooling, settings.layer, settings.normalize), cancelled
        )
        # A GPU: the model's launcher launches, the lander delivers; this thread queues rows.
        launcher = self._launcher(entry) if encoder.passes is None and self.landers else None
        try:
            for chunk in chunks:
                if request.done:  # failed in a batch of another chunk's rows
                    break
                if request.cancelled():
                    raise Cancelled("the client went away; its queued texts were dropped")
                queue.extend(request, chunk.result())
                if launcher is not None:
                    launcher.wake()
                elif queue.queued_tokens >= self.max_batch_tokens:
                    self._run_batch(entry, request, packed)
            if encoder.passes is not None and split_passes(
                queue.queued_tokens, self.max_batch_tokens
            ):
                self._helpers.submit(self._help, entry, request, packed)
            while not request.done:
                if request.cancelled():
                    raise Cancelled("the client went away; its queued texts were dropped")
                if launcher is not None:
                    launcher.wake()  # (a launcher that ended idle as our rows came)
                    request.wait(0.05)
                elif not self._run_batch(entry, request, packed):
                    request.wait(0.05)  # our remaining rows are in another thread's batch
        finally:
            for chunk in chunks:
                chunk.cancel()  # not yet started: nobody needs its tokens now
            if not request.done or request.error is not None:
                # Interrupted or failed (maybe a chunk after the failure went in): nobody
                # computes rows nobody waits for.
                queue.cancel(request)
        return request.result()

    def _launcher(self, entry: _Loaded) -> Launcher:
        """This service's launcher of `entry`'s batches (a registry may be shared)."""
        with self._counter_lock:
            launcher = entry.launchers.get(id(self))
            if launcher is None:
                launcher = entry.launchers[id(self)] = Launcher(
                    functools.partial(self._launch_next, entry), entry.queue.wait_for_change
                )
        return launcher

    def _help(self, entry: _Loaded, request: PendingRequest, packed: bool) -> None:
        """Run the queue's passes beside `request`'s own thread until it is done (a CPU whose
        lone pass would use one core: cpu_threads.py)."""
        try:
            while not request.done and self._run_batch(entry, request, packed):
                pass
        except Exception:  # noqa: BLE001 - a batch's failure reached its requests already
            log.exception("a helper pass failed")

    def _run_batch(self, entry: _Loaded, request: PendingRequest, packed: bool) -> bool:
        """Take the queue's next batch under the model lock, run it and deliver it; False when
        there was none (or `request` was done by the time of the lock).

        On a CPU, where a pass is synchronous, the lock covers taking the batch only and the
        pass runs beside up to `PARALLEL_PASSES - 1` others (cpu_threads.py): this thread first
        waits for a free pass, at most one pass's time. On a GPU only with `landers` off (the
        launcher launches otherwise): `_launch_and_wait`."""
        if entry.encoder.passes is None:
            return self._launch_and_wait(entry, request, packed)
        encoder, queue = entry.encoder, entry.queue
        with encoder.passes:
            with encoder.lock:
                if request.done:
                    return False
                # The queue split over the passes (cpu_threads.py).
                budget = pass_budget(queue.queued_tokens, self.max_batch_tokens)
                rows = queue.next_batch(budget, packed)
            if not rows:
                return False
            launched = self._launch(encoder, queue, rows)
            if launched is None:
                return True
            vectors = launched.result().numpy()
        queue.deliver(rows, vectors)
        self._count(rows)
        return True

    def _launch_next(self, entry: _Loaded) -> bool:
        """The launcher's step on a GPU: launch the next batch if one of the batches the device
        holds launched (`Encoder.launches`) is free, and leave its vectors to the lander;
        whether a batch went out. With a batch already on the device, a short batch waits while
        more rows are being tokenised (BatchQueue.next_batch's `min_tokens`, `_least_tokens`),
        so the device's queue holds a batch's worth of time, not a scrap."""
        encoder, queue = entry.encoder, entry.queue
        slot = encoder.launches
        if slot is not None and not slot.acquire(blocking=False):
            return False  # both out: rows queued meanwhile gather into the next batch
        handed = False
        try:
            least = self._least_tokens(entry)
            with encoder.lock:
                rows = queue.next_batch(self.max_batch_tokens, encoder.packed, least)
                if not rows:
                    return False
                launched = self._launch(encoder, queue, rows)
                if launched is None:
                    return True
                tokens = sum(len(row.ids) for row in rows)
                entry.in_flight_change(1, tokens)
                done = functools.partial(self._landed, entry, rows, slot, tokens)
                entry.lander.put(launched, rows, done)
                handed = True
            return True
        finally:
            if not handed and slot is not None:
                slot.release()

    def _least_tokens(self, entry: _Loaded) -> int:
        """The fewest tokens the next batch waits for while rows are being tokenised: none on
        an idle device (it starts on a stream's first chunk, a few texts: tokenizing.py); with
        batches on the device, twice their tokens up to half the budget (`ramp`), so a stream
        starts on small batches that double as its rows arrive rather than the device waiting
        for half a budget's rows behind its first few texts. `ramp` off: half the budget
        whenever a batch is on the device, as until 2026-12-03.

        Not a larger first batch: one of a quarter of the budget (to cover its own launch, 130
        ms under the head's contention against ~25 ms of GPU for the first chunks' 6,690
        tokens) measured 0.977x this on the H200 (2026-12-03 18:26): the GPU started later."""
        if not entry.in_flight:
            return 0
        half = self.max_batch_tokens // 2
        return min(half, 2 * entry.in_flight_tokens) if self.ramp else half

    def _launch_and_wait(self, entry: _Loaded, request: PendingRequest, packed: bool) -> bool:
        """A GPU's `_run_batch` as until 2026-12-03 (`landers` False): launch under the lock,
        then wait for the vectors on this thread and deliver them."""
        encoder, queue = entry.encoder, entry.queue
        slot = encoder.launches
        if slot is not None:
            slot.acquire()
        try:
            with encoder.lock:
                if request.done:
                    return False
                rows = queue.next_batch(self.max_batch_tokens, packed)
                if not rows:
                    return False
                launched = self._launch(encoder, queue, rows)
            if launched is None:
                return True
            try:
                vectors = launched.result().numpy()
            except Exception as exc:  # noqa: BLE001 - a device error surfaces here
                queue.fail(rows, exc)
                return True
        finally:
            if slot is not None:
                slot.release()
        queue.deliver(rows, vectors)
        self._count(rows)
        return True

    def _landed(
        self,
        entry: _Loaded,
        rows: list,
        slot: threading.Semaphore | None,
        tokens: int,
        vectors: np.ndarray | None,
        error: BaseException | None,
    ) -> None:
        """On the lander's thread: a launched batch's vectors (or its device error) arrived;
        its launch slot is given back."""
        entry.in_flight_change(-1, tokens)
        if slot is not None:
            slot.release()
        if error is not None:
            entry.queue.fail(rows, error)
            return
        entry.queue.deliver(rows, vectors)
        self._count(rows)

    @staticmethod
    def _launch(encoder: Encoder, queue: BatchQueue, rows: list) -> Launched | None:
        """The batch's forward pass, launched; None when it failed (then every request with
        rows in it has failed)."""
        run = rows[0].request.key  # one key per batch, maybe not ours
        try:
            return encoder.launch(
                [row.ids for row in rows],
                pooling=run.pooling,
                layer=run.layer,
                normalize=run.normalize,
            )
        except Exception as exc:  # noqa: BLE001 - to every request in the batch
            queue.fail(rows, exc)
            return None

    def _count(self, rows: list) -> None:
        requests = len({id(row.request) for row in rows})
        tokens = sum(len(row.ids) for row in rows)
        with self._counter_lock:
            self.batches += 1
            self.computed_texts += len(rows)
            self.computed_tokens += tokens
            self.shared_batches += requests > 1

    def counters(self) -> ComputeCounters:
        with self._counter_lock:
            return ComputeCounters(
                self.batches,
                self.computed_texts,
                self.shared_batches,
                sum(entry.queue.dropped_rows for entry in self.registry.entries()),
                self.computed_tokens,
            )

    def cache_stats(self) -> CacheStats:
        return self.cache.stats()

    def stop_launchers(self) -> None:
        """End this service's launcher threads (a registry shared with another service keeps
        its models, whose queues this service must no longer take batches from)."""
        for entry in self.registry.entries():
            launcher = entry.launchers.pop(id(self), None)
            if launcher is not None:
                launcher.stop()

    def close(self) -> None:
        self.stop_launchers()
        self._helpers.shutdown(wait=False, cancel_futures=True)
        self.cache.close()
