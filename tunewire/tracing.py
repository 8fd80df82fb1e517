"""OpenTelemetry traces: a span per RPC (from the shared call interceptor) and per job phase, each
carrying the call's request id (`tunewire.request_id`).

Exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the exporter reads the standard
`OTEL_EXPORTER_OTLP_*` variables: headers, certificate, timeout; `OTEL_SERVICE_NAME` overrides
the service name). When it is not set nothing is built and every hook returns at its first line:
tracing then costs one global read per call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import structlog

log = structlog.get_logger("tunewire.tracing")

_tracer: Any = None
_provider: Any = None


def enabled() -> bool:
    return _tracer is not None


def configure_from_env(service_name: str) -> bool:
    """Export spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; True when it is."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    use(BatchSpanProcessor(OTLPSpanExporter()), service_name)
    log.info("tracing on", endpoint=os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])
    return True


def use(processor: Any, service_name: str) -> None:
    """Send spans to `processor` (an OpenTelemetry SpanProcessor); tests pass a
    SimpleSpanProcessor over an InMemorySpanExporter."""
    global _tracer, _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(processor)
    _provider, _tracer = provider, provider.get_tracer("tunewire")


def shutdown() -> None:
    """Flush and stop exporting (end of process, or a test's end)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def start_rpc_span(method: str, request_id: str, principal: str = "") -> Any:
    """A started span for an RPC (`/pkg.Service/Method`), or None when tracing is off;
    `principal`: who the call runs as, where there are tokens."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    service, _, name = method.lstrip("/").rpartition("/")
    return _tracer.start_span(
        method.lstrip("/"),
        kind=SpanKind.SERVER,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "tunewire.request_id": request_id,
            **({"tunewire.principal": principal} if principal else {}),
        },
    )


def end_rpc_span(span: Any, code: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("rpc.grpc.status_code", code)
    if code not in ("OK", "CANCELLED"):
        span.set_status(Status(StatusCode.ERROR, code))
    span.end()


@contextlib.contextmanager
def phase(name: str, **attributes: Any) -> Iterator[Any]:
    """A span for one phase of long work (a job's setup, training, evaluation...); attributes
    are set as `tunewire.<key>`. Does nothing when tracing is off."""
    if _tracer is None:
        yield None
        return
    attrs = {f"tunewire.{k}": v for k, v in attributes.items() if v is not None and v != ""}
    with _tracer.start_as_current_span(name, attributes=attrs) as span:
        yield span


class JobTrace:
    """Spans of one attempt of a job: a `job` span over the attempt and, inside it, one span per
    phase its progress reports (`load data`, then each progress `phase`: train, evaluate...),
    each carrying the job id, the request id that created it and the attempt. With tracing off
    every method returns at once."""

    def __init__(self, job_id: str, request_id: str, attempt: int, owner: str = "") -> None:
        self._attrs = {
            "tunewire.job_id": job_id,
            "tunewire.request_id": request_id,
            "tunewire.attempt": attempt,
            "tunewire.owner": owner,
        }
        self._job = self._phase = None
        self._phase_name = ""
        if _tracer is None:
            return
        self._job = _tracer.start_span("job", attributes=self._attrs)
        self.phase("load data")

    def phase(self, name: str) -> None:
        """Enter phase `name` (ending the one before) unless already in it."""
        if self._job is None or name == self._phase_name:
            return
        from opentelemetry.trace import set_span_in_context

        if self._phase is not None:
            self._phase.end()
        self._phase_name = name
        self._phase = _tracer.start_span(
            f"job {name}", context=set_span_in_context(self._job), attributes=self._attrs
        )

    def progress(self, event: Any) -> None:
        """Note a job event: a progress event names the phase the job is in."""
        name = getattr(event, "phase", None)
        if name:
            self.phase(name)

    def end(self, state: str) -> None:
        if self._job is None:
            return
        from opentelemetry.trace import Status, StatusCode

        if self._phase is not None:
            self._phase.end()
        self._job.set_attribute("tunewire.state", state)
        if state == "FAILED":
            self._job.set_status(Status(StatusCode.ERROR, state))
        self._job.end()
        self._job = self._phase = None
