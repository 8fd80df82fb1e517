"""Prometheus metrics for every server, through `prometheus_client` (names prefixed `tunewire_`).

What every server exports, from the shared call interceptor (`tunewire.calls`):

    tunewire_build_info{version,python,grpc}        1, present from start
    tunewire_rpcs_total{service,method,code}         calls finished, by status code
    tunewire_rpc_duration_seconds{service,method}    histogram of call durations (a stream: its
                                                     whole life)
    tunewire_open_streams{service,method}            streams open now
    tunewire_calls_refused_total{service,method,reason}  refused by a cap (TOO_MANY_CALLS)

Each service adds what it knows at scrape time with `add_source` (the embedder its cache and
batch queue, the trainer its jobs by state, queue and running jobs' throughput; GPU memory where
CUDA is present). The HTTP port (`serve`, `--metrics-port`) serves metrics and nothing else and
needs no token: it must be reachable only by the scraper (the k8s NetworkPolicies say so).
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import prometheus_client
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import tunewire

log = structlog.get_logger("tunewire.metrics")

REGISTRY = prometheus_client.REGISTRY

BUILD = prometheus_client.Info("tunewire_build", "tunewire build information", registry=REGISTRY)
BUILD.info(
    {
        "version": getattr(tunewire, "__version__", "0"),
        "python": platform.python_version(),
        "grpc": grpc.__version__,
    }
)
RPCS = prometheus_client.Counter(
    "tunewire_rpcs",
    "RPCs finished, by status code",
    ["service", "method", "code"],
    registry=REGISTRY,
)
RPC_SECONDS = prometheus_client.Histogram(
    "tunewire_rpc_duration_seconds",
    "RPC duration in seconds (a stream: from open to close)",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
OPEN_STREAMS = prometheus_client.Gauge(
    "tunewire_open_streams", "Streams open now", ["service", "method"], registry=REGISTRY
)
REFUSED = prometheus_client.Counter(
    "tunewire_calls_refused",
    "Calls refused by a cap before they ran",
    ["service", "method", "reason"],
    registry=REGISTRY,
)


def _split(method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def observe_rpc(method: str, code: str, seconds: float) -> None:
    service, name = _split(method)
    RPCS.labels(service, name, code).inc()
    RPC_SECONDS.labels(service, name).observe(seconds)


def stream_opened(method: str) -> None:
    OPEN_STREAMS.labels(*_split(method)).inc()


def stream_closed(method: str) -> None:
    OPEN_STREAMS.labels(*_split(method)).dec()


def count_refused(method: str, reason: str) -> None:
    REFUSED.labels(*_split(method), reason).inc()


Source = Callable[[], Iterable[Metric]]


class _Sources(Collector):
    """The services' scrape-time metrics: each source yields metric families; families of the
    same name from several sources (e.g. `serve all`) are merged."""

    def __init__(self) -> None:
        self._sources: dict[int, Source] = {}
        self._lock = threading.Lock()

    def add(self, source: Source) -> Callable[[], None]:
        with self._lock:
            self._sources[id(source)] = source

        def remove() -> None:
            with self._lock:
                self._sources.pop(id(source), None)

        return remove

    def __len__(self) -> int:
        with self._lock:
            return len(self._sources)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            sources = list(self._sources.values())
        merged: dict[str, Metric] = {}
        for source in sources:
            try:
                families = list(source())
            except Exception:  # noqa: BLE001 - a failing source must not hide the others
                log.exception("metrics source failed")
                continue
            for family in families:
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield from merged.values()


_SOURCES = _Sources()
REGISTRY.register(_SOURCES)


def sources_registered() -> int:
    """How many scrape-time sources are registered (a closed service has removed its own)."""
    return len(_SOURCES)


def add_source(source: Source) -> Callable[[], None]:
    """Register `source` (called at each scrape); returns the function that removes it."""
    return _SOURCES.add(source)


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    """One gauge sample as a family, for sources."""
    labels = labels or {}
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def counter(name: str, doc: str, value: float) -> Metric:
    """One cumulative count as a family (exposed as `<name>_total`), for sources."""
    family = CounterMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def gpu_memory() -> Iterable[Metric]:
    """Allocated and reserved CUDA memory per device, where CUDA is present and in use."""
    import sys

    torch = sys.modules.get("torch")  # only a process that uses torch has GPU memory to report
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    allocated = GaugeMetricFamily(
        "tunewire_gpu_memory_allocated_bytes", "CUDA memory held by tensors", labels=["device"]
    )
    reserved = GaugeMetricFamily(
        "tunewire_gpu_memory_reserved_bytes",
        "CUDA memory reserved by the caching allocator",
        labels=["device"],
    )
    for index in range(torch.cuda.device_count()):
        allocated.add_metric([str(index)], torch.cuda.memory_allocated(index))
        reserved.add_metric([str(index)], torch.cuda.memory_reserved(index))
    return [allocated, reserved]


add_source(gpu_memory)


class MetricsServer:
    """The HTTP server of `/metrics`; `port` is the bound one (0 binds any)."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(port: int, host: str = "0.0.0.0") -> MetricsServer:
    """Serve the registry on http://host:port/metrics (no auth: metrics only)."""
    server, thread = prometheus_client.start_http_server(port, addr=host, registry=REGISTRY)
    metrics = MetricsServer(server, thread)
    log.info("metrics serving", address=f"{host}:{metrics.port}", path="/metrics")
    return metrics
