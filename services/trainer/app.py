"""Build and start the trainer server (used by `python -m services.trainer` and embedded mode)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from services.trainer.dataset_retention import (
    DEFAULT_MAX_UNREFERENCED_BYTES,
    DEFAULT_TTL_S,
    Retention,
)
from services.trainer.datasets import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_MAX_DATASET_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
)
from services.trainer.service import TrainerCore
from services.trainer.servicer import TrainerServicer
from tunewire import metrics
from tunewire.server import RunningServer, ServerSecurity, ServerSettings, Service, create_server
from tunewire.v1 import trainer_pb2_grpc

SERVICE_NAME = "tunewire.v1.TrainerService"


@dataclass
class Settings:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50052
    embedder: str | None = None
    hub_gateway: str | None = None
    workers: int = 1
    # Embedded mode reads model paths anywhere the user can; a server only under its roots.
    allow_any_model_path: bool = False
    model_roots: list[Path] = field(default_factory=list)
    # Encoders by name (--model NAME=PATH): a job config may say NAME for PATH.
    models: dict[str, str] = field(default_factory=dict)
    # Data sets no job references end: unused this long (0: never), and beyond this many bytes
    # the least recently used go (0: no cap). See dataset_retention.py.
    dataset_ttl_seconds: float = DEFAULT_TTL_S
    max_unreferenced_dataset_bytes: int = DEFAULT_MAX_UNREFERENCED_BYTES
    # Hub ids may be base models and encoders (tunewire/model_roots.py).
    hub_models: bool = True
    # Limits: a bigger upload is RESOURCE_EXHAUSTED; a job running longer is FAILED; a submit
    # beyond the queue is RESOURCE_EXHAUSTED. 0 turns the last two off.
    max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES
    # A data set larger than this parsed is RESOURCE_EXHAUSTED; parsed data sets are kept in
    # memory up to dataset_cache_bytes, least recently used evicted.
    max_dataset_memory_bytes: int = DEFAULT_MAX_FRAME_BYTES
    dataset_cache_bytes: int = DEFAULT_CACHE_BYTES
    max_job_seconds: float = 0.0
    max_queued_jobs: int = 0
    # Events a job records besides its state changes (runner.py).
    max_events_per_job: int = 100_000
    security: ServerSecurity = field(default_factory=ServerSecurity)


_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")


def metrics_source(core: TrainerCore) -> Callable[[], list[Metric]]:
    """The trainer's scrape-time metrics: jobs by state (QUEUED is the queue's depth) and the
    latest throughput each running job reported (tokens/s for generative jobs)."""

    def collect() -> list[Metric]:
        jobs = core.jobs.all()
        by_state = GaugeMetricFamily("tunewire_trainer_jobs", "Jobs by state", labels=["state"])
        for state in _STATES:
            by_state.add_metric([state], sum(j.state == state for j in jobs))
        throughput = GaugeMetricFamily(
            "tunewire_trainer_job_throughput",
            "The latest throughput a running job reported, in its unit (tokens/s, examples/s)",
            labels=["job_id", "unit"],
        )
        for job in jobs:
            if job.state != "RUNNING":
                continue
            events, _ = core.jobs.events_since(job.id, 0)
            progress = next((e for e in reversed(events) if e.kind == "progress"), None)
            if progress is not None:
                throughput.add_metric(
                    [job.id, progress.data.get("unit", "")], progress.data.get("throughput", 0.0)
                )
        return [by_state, throughput]

    return collect


@dataclass
class App:
    running: RunningServer
    core: TrainerCore
    remove_metrics: Callable[[], None] = lambda: None

    @property
    def port(self) -> int:
        return self.running.port

    def close(self) -> None:
        self.remove_metrics()
        self.core.close()


def start(settings: Settings) -> App:
    core = TrainerCore(
        settings.data_dir,
        embedder_address=settings.embedder,
        hub_gateway_address=settings.hub_gateway,
        workers=settings.workers,
        allowed_model_roots=settings.model_roots,
        allow_any_model_path=settings.allow_any_model_path,
        hub_models=settings.hub_models,
        max_dataset_bytes=settings.max_dataset_bytes,
        max_dataset_memory_bytes=settings.max_dataset_memory_bytes,
        dataset_cache_bytes=settings.dataset_cache_bytes,
        max_job_seconds=settings.max_job_seconds,
        max_queued_jobs=settings.max_queued_jobs,
        max_events_per_job=settings.max_events_per_job,
        model_names=settings.models,
        dataset_retention=Retention(
            settings.dataset_ttl_seconds, settings.max_unreferenced_dataset_bytes
        ),
    )
    running = create_server(
        [
            Service(
                SERVICE_NAME,
                TrainerServicer(core),
                trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
            )
        ],
        ServerSettings(host=settings.host, port=settings.port, security=settings.security),
    )
    core.start()
    running.set_ready(SERVICE_NAME)
    return App(running, core, metrics.add_source(metrics_source(core)))
