"""Assembles the embedder: cache, domain service, gRPC server, health.

Health stays NOT_SERVING until the cache is open and every preloaded model has its weights in
memory, so a Kubernetes probe never routes traffic to a replica that would stall on its first call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import torch
from prometheus_client.core import Metric

from services.embedder.artifact_fetch import TrainerArtifacts
from services.embedder.batching import DEFAULT_MAX_BATCH_TOKENS
from services.embedder.cache import (
    DEFAULT_MAP_SIZE,
    DEFAULT_MAX_MAP_SIZE,
    EmbeddingCache,
    cache_path,
)
from services.embedder.heads import DEFAULT_HEAD_CACHE_BYTES, HeadCache
from services.embedder.hot_answers import DEFAULT_HOT_ANSWER_BYTES
from services.embedder.hot_vectors import DEFAULT_HOT_VECTOR_BYTES
from services.embedder.service import SHARED, EmbedderService
from services.embedder.servicer import (
    DEFAULT_MAX_INSTRUCTION_BYTES,
    DEFAULT_MAX_TEXT_BYTES,
    DEFAULT_MAX_TEXTS,
    EmbedderServicer,
    add_to_server,
)
from tunewire import metrics
from tunewire.devices import chosen_compute_dtype, default_device
from tunewire.model_roots import ModelRoots, looks_local
from tunewire.paths import default_data_dir
from tunewire.server import RunningServer, ServerSecurity, ServerSettings, Service, create_server

log = structlog.get_logger(__name__)

SERVICE_NAME = "tunewire.v1.EmbedderService"


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: Path = field(default_factory=default_data_dir)
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_loaded_models: int = 2
    preload: list[str] = field(default_factory=list)
    max_texts: int = DEFAULT_MAX_TEXTS
    # "" picks CUDA when there is one, else the CPU.
    device: str = ""
    cache_map_size: int = DEFAULT_MAP_SIZE
    # The cache grows up to this many bytes, then writes fail with RESOURCE_EXHAUSTED/CACHE_FULL.
    cache_max_size: int = DEFAULT_MAX_MAP_SIZE
    # Padding-free batches where the model allows them; False pads every batch.
    varlen: bool = True
    # torch.compile each model's blocks at load; None: on a GPU, not on a CPU.
    compile: bool | None = None
    # Packed batches replay CUDA graphs per shape bucket on a GPU (services/embedder/graphs.py).
    cuda_graphs: bool = False
    # What forward passes run in (tunewire.devices.COMPUTE_DTYPES): "auto" is bf16 on a GPU and
    # fp32 on a CPU; "bfloat16" on a CPU with AVX512-BF16/AMX is an opt-in, several times faster
    # there, whose vectors are fingerprinted apart (cosine ~0.9999 to fp32's; a head trained on
    # fp32 vectors refuses them).
    compute_dtype: str = "auto"
    # The interpreter's thread switch interval in this process (ms; None: Python's own, 5 ms).
    # A GPU batch's launch releases and takes back the GIL at every op, and each take-back may
    # wait this long for a thread busy in Python (an Embed call's parsing, lookups, answer).
    switch_interval_ms: float | None = None
    # Texts longer than this (UTF-8 bytes) are INVALID_ARGUMENT; shorter ones are truncated to
    # the encoder's max_length in tokens.
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    # Longer instructions (UTF-8 bytes; put before every text) are INVALID_ARGUMENT.
    max_instruction_bytes: int = DEFAULT_MAX_INSTRUCTION_BYTES
    # Whole answers kept in memory as sent, for replays (0: none); see hot_answers.py.
    hot_answer_bytes: int = DEFAULT_HOT_ANSWER_BYTES
    # "shared": one cache for every principal; "principal": each hits only its own (service.py).
    cache_scope: str = SHARED
    # Online prediction (PredictRows): the trainer a job's head is fetched from ("": none), the
    # directories local artifacts may be read from, and the memory for heads kept warm.
    trainer: str = ""
    # Encoders by name (--model NAME=PATH): a request may say NAME for PATH; they are preloaded.
    models: dict[str, str] = field(default_factory=dict)
    artifact_roots: list[Path] = field(default_factory=list)
    allow_any_artifact_path: bool = False
    # Trainers' artifacts directories: a path in one is served as its job (heads.py).
    job_artifact_roots: list[Path] = field(default_factory=list)
    head_cache_bytes: int = DEFAULT_HEAD_CACHE_BYTES
    # Directories local models must lie under (tunewire/model_roots.py); None: anywhere (the
    # embedded, single-user mode). `python -m services.embedder` always sets them.
    model_roots: list[Path] | None = None
    # Hub ids may be loaded (downloaded unless HF_HUB_OFFLINE).
    hub_models: bool = True
    # Vectors kept in memory by text, for text-by-text reads (0: none); see hot_vectors.py.
    hot_vector_bytes: int = DEFAULT_HOT_VECTOR_BYTES
    security: ServerSecurity = field(default_factory=ServerSecurity)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.max_batch_tokens <= 0:
            raise ValueError("max_batch_tokens must be positive")
        if self.max_loaded_models < 1:
            raise ValueError("max_loaded_models must be >= 1")
        if self.max_texts < 1:
            raise ValueError("max_texts must be >= 1")
        if self.hot_answer_bytes < 0:
            raise ValueError("hot_answer_bytes must be >= 0")
        if self.max_instruction_bytes < 0:
            raise ValueError("max_instruction_bytes must be >= 0")
        if self.cache_max_size < self.cache_map_size:
            # Raising it quietly to the floor would let the cache grow past what was asked.
            raise ValueError(
                f"cache_max_size {self.cache_max_size} is below the cache's initial map size "
                f"{self.cache_map_size}: give at least {self.cache_map_size} bytes"
            )
        if self.hot_vector_bytes < 0:
            raise ValueError("hot_vector_bytes must be >= 0")
        if self.compute_dtype != "auto":
            # Refused here, before a cache opens or a port binds, where the device lacks it.
            device = torch.device(self.device) if self.device else default_device()
            chosen_compute_dtype(device, self.compute_dtype)


def metrics_source(service: EmbedderService) -> Callable[[], list[Metric]]:
    """The embedder's scrape-time metrics: cache hits, misses and size, work done, and the batch
    queues (texts waiting for the model, in rows and tokens, over every loaded model)."""

    def collect() -> list[Metric]:
        cache, work = service.cache_stats(), service.counters()
        queues = [entry.queue for entry in service.registry.entries()]
        return [
            metrics.counter(
                "tunewire_embedder_cache_hits", "Texts answered from the cache", cache.hits
            ),
            metrics.counter(
                "tunewire_embedder_cache_misses", "Texts not in the cache", cache.misses
            ),
            metrics.gauge(
                "tunewire_embedder_cache_bytes", "Bytes the cache's pages hold", cache.bytes
            ),
            metrics.gauge("tunewire_embedder_cache_entries", "Vectors in the cache", cache.entries),
            metrics.gauge(
                "tunewire_embedder_cache_map_bytes", "The cache's current map size", cache.map_size
            ),
            metrics.counter(
                "tunewire_embedder_forward_passes", "Forward passes run", work.forward_passes
            ),
            metrics.counter(
                "tunewire_embedder_computed_texts", "Texts computed by a model", work.computed_texts
            ),
            metrics.counter(
                "tunewire_embedder_computed_tokens",
                "Tokens of the texts computed by a model",
                work.computed_tokens,
            ),
            metrics.counter(
                "tunewire_embedder_dropped_texts",
                "Queued texts dropped because their client left",
                work.dropped_texts,
            ),
            metrics.gauge(
                "tunewire_embedder_queue_rows",
                "Texts waiting for the model",
                sum(q.pending_rows() for q in queues),
            ),
            metrics.gauge(
                "tunewire_embedder_queue_tokens",
                "Tokens waiting for the model",
                sum(q.queued_tokens() for q in queues),
            ),
        ]

    return collect


@dataclass
class App:
    running: RunningServer
    service: EmbedderService
    heads: HeadCache | None = None
    remove_metrics: Callable[[], None] = lambda: None
    # The servicer itself, for a front door in this process (clients/http/local.py).
    servicer: EmbedderServicer | None = None

    def set_trainer(self, address: str) -> None:
        """Fetch jobs' heads from the trainer at `address` (set once it has started)."""
        if self.heads is not None:
            self.heads.fetch = TrainerArtifacts(address)

    @property
    def port(self) -> int:
        return self.running.port

    def close(self) -> None:
        """Close the cache; call after the server has stopped (wait_for_termination's on_stop)."""
        self.remove_metrics()
        self.service.close()

    def stop(self, grace: float | None = 5.0) -> None:
        """Stop serving and close the cache (tests and embedded use)."""
        self.running.stop(grace).wait()
        self.close()


def _roots(settings: Settings) -> ModelRoots:
    """The settings' roots, plus every local model the operator preloads or names (--model)."""
    if settings.model_roots is None:
        return ModelRoots(None, settings.hub_models)
    chosen = [*settings.preload, *settings.models.values()]
    preloaded = [Path(m) for m in chosen if looks_local(m) or Path(m).is_dir()]
    return ModelRoots.of([*settings.model_roots, *preloaded], settings.hub_models)


def start(settings: Settings) -> App:
    """Open the cache, start the server (NOT_SERVING), preload models, then report SERVING."""
    cache = EmbeddingCache(
        cache_path(settings.data_dir),
        map_size=settings.cache_map_size,
        max_map_size=settings.cache_max_size,
    )
    device = torch.device(settings.device) if settings.device else None
    if settings.switch_interval_ms is not None:
        sys.setswitchinterval(settings.switch_interval_ms / 1000)
    service = EmbedderService(
        cache,
        max_batch_tokens=settings.max_batch_tokens,
        max_loaded_models=settings.max_loaded_models,
        device=device,
        varlen=settings.varlen,
        compile=settings.compile,
        cuda_graphs=settings.cuda_graphs,
        compute_dtype=settings.compute_dtype,
        hot_answer_bytes=settings.hot_answer_bytes,
        hot_vector_bytes=settings.hot_vector_bytes,
        roots=_roots(settings),
        cache_scope=settings.cache_scope,
    )
    fetch = TrainerArtifacts(settings.trainer) if settings.trainer else None
    heads = HeadCache(
        settings.artifact_roots,
        fetch,
        settings.head_cache_bytes,
        allow_any_path=settings.allow_any_artifact_path,
        job_roots=settings.job_artifact_roots,
    )
    service.registry.names.update(settings.models)
    servicer = EmbedderServicer(
        service,
        max_texts=settings.max_texts,
        max_text_bytes=settings.max_text_bytes,
        heads=heads,
        max_instruction_bytes=settings.max_instruction_bytes,
    )
    running = create_server(
        [Service(SERVICE_NAME, servicer, add_to_server)],
        ServerSettings(host=settings.host, port=settings.port, security=settings.security),
    )
    try:
        for model in dict.fromkeys([*settings.preload, *settings.models.values()]):
            service.preload(model)
    except BaseException:
        running.stop(None)
        cache.close()
        raise
    running.set_ready(SERVICE_NAME)
    log.info(
        "embedder ready",
        port=running.port,
        data_dir=str(settings.data_dir),
        preloaded=settings.preload,
    )
    return App(
        running=running,
        service=service,
        heads=heads,
        remove_metrics=metrics.add_source(metrics_source(service)),
        servicer=servicer,
    )
