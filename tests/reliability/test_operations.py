"""Operations (issue 20): Prometheus metrics scraped over HTTP from real servers, and the
OpenTelemetry spans of RPCs and job phases, caught by an in-memory exporter."""

from __future__ import annotations

import time
import urllib.request
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from services.trainer.app import Settings as TrainerSettings
from services.trainer.app import start as start_trainer
from services.trainer.context import JobContext, JobResult, Progress, StateChange
from services.trainer.job_store import JobRecord
from tests.reliability import procs
from tests.reliability.conftest import code_of
from tunewire import metrics, tracing
from tunewire.server import ServerSecurity
from tunewire.v1 import trainer_pb2, trainer_pb2_grpc


def scrape(port: int) -> dict[str, list]:
    """name -> samples, from http://127.0.0.1:port/metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    found = [s.value for s in samples.get(name, []) if labels.items() <= s.labels.items()]
    assert found, f"no {name} {labels}: {sorted(samples)}"
    return sum(found)


def test_a_service_process_serves_metrics_on_its_metrics_port(tmp_path):
    """`python -m services.trainer --metrics-port`: build info from start, then per-RPC counts
    and latencies, open streams and jobs by state after a few calls."""
    port = procs.free_port()
    trn = procs.start(
        "trainer", ["--data-dir", str(tmp_path), "--metrics-port", str(port)], tmp_path / "t.log"
    )
    try:
        assert value(scrape(port), "tunewire_build_info") == 1
        channel = grpc.insecure_channel(trn.address)
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        for _ in range(3):
            stub.ListJobs(trainer_pb2.ListJobsRequest(), timeout=10)
        assert code_of(lambda: stub.GetJob(trainer_pb2.GetJobRequest(id="nope"), timeout=10)) == (
            grpc.StatusCode.NOT_FOUND
        )
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        next(watch)
        samples = scrape(port)
        service = "tunewire.v1.TrainerService"
        assert value(samples, "tunewire_rpcs_total", method="ListJobs", code="OK") == 3
        assert value(samples, "tunewire_rpcs_total", method="GetJob", code="NOT_FOUND") == 1
        assert (
            value(
                samples, "tunewire_rpc_duration_seconds_count", service=service, method="ListJobs"
            )
            == 3
        )
        assert value(samples, "tunewire_open_streams", method="Watch") == 1
        assert value(samples, "tunewire_trainer_jobs", state="QUEUED") == 0
        watch.cancel()
        channel.close()
    finally:
        trn.stop()


def test_the_gateway_reports_uploads_by_state(tmp_path):
    from services.hub_gateway.app import Settings, start

    # Other tests' services in this process may still have sources of their own: count ours.
    before = metrics.sources_registered()
    app = start(Settings(data_dir=tmp_path, port=0))
    server = metrics.serve(0, host="127.0.0.1")
    try:
        assert metrics.sources_registered() == before + 1
        samples = scrape(server.port)
        assert value(samples, "tunewire_hub_gateway_uploads", state="PENDING") == 0
        assert value(samples, "tunewire_hub_gateway_uploads", state="SUCCEEDED") == 0
    finally:
        server.close()
        app.close()
    assert metrics.sources_registered() == before  # its source removed with it


def test_the_metrics_port_serves_metrics_only(tmp_path):
    server = metrics.serve(0, host="127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read()
        assert b"tunewire_build_info" in text
        assert b"authorization" not in text.lower()
    finally:
        server.close()


def slow_recipe(ctx: JobContext) -> JobResult:
    """Reports two phases, as the recipes do."""
    ctx.emit(Progress(phase="train", step=1, total_steps=2, throughput=100.0, unit="tokens/s"))
    time.sleep(0.05)
    ctx.emit(Progress(phase="evaluate", step=2, total_steps=2))
    ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
    (ctx.artifact_dir / "head.txt").write_text("a tiny artifact")
    return JobResult(metrics=[])


def queue_job(app, request_id: str) -> JobRecord:
    """A job put on the runner's queue as admitted, running `slow_recipe` on no data (admission
    and data loading are other tests' business)."""
    runner = app.core.runner
    runner.dispatch = lambda _model_type: slow_recipe
    runner.admission.load_splits = lambda _config, _inputs: (None, None, None)
    rec = app.core.jobs.create(
        JobRecord(
            id="job-traced", state="QUEUED", config={}, request_id=request_id, create_time=1.0
        )
    )
    app.core.jobs.append_event(rec.id, StateChange("QUEUED", "queued"))
    runner._configs[rec.id] = SimpleNamespace(model_type="ecd")
    runner._queue.put(rec.id)
    return rec


@pytest.fixture
def spans():
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.use(SimpleSpanProcessor(exporter), "tunewire-test")
    yield exporter
    tracing.shutdown()


def test_spans_per_rpc_and_per_job_phase_carry_the_request_id(tmp_path, spans):
    (tmp_path / "tokens").write_text("tok-alice-5f1e train alice\n")
    app = start_trainer(
        TrainerSettings(
            data_dir=tmp_path / "data",
            port=0,
            security=ServerSecurity(auth_tokens_file=tmp_path / "tokens"),
        )
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        stub.ListJobs(
            trainer_pb2.ListJobsRequest(),
            metadata=[("x-request-id", "req-42"), ("authorization", "Bearer tok-alice-5f1e")],
        )
        job = queue_job(app, request_id="req-job-7")
        deadline = time.monotonic() + 30
        while app.core.jobs.get(job.id).state not in ("SUCCEEDED", "FAILED"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert app.core.jobs.get(job.id).state == "SUCCEEDED"
    finally:
        channel.close()
        app.running.stop(None).wait(10)
        app.close()
    by_name = {}
    for span in spans.get_finished_spans():
        by_name.setdefault(span.name, []).append(span)
    rpc = by_name["tunewire.v1.TrainerService/ListJobs"][0]
    assert rpc.attributes["tunewire.request_id"] == "req-42"
    assert rpc.attributes["rpc.grpc.status_code"] == "OK"
    assert rpc.attributes["tunewire.principal"] == "alice"
    job_span = by_name["job"][0]
    assert job_span.attributes["tunewire.request_id"] == "req-job-7"
    assert job_span.attributes["tunewire.state"] == "SUCCEEDED"
    for phase in ("job load data", "job train", "job evaluate"):
        (span,) = by_name[phase]
        assert span.parent.span_id == job_span.context.span_id
        assert span.attributes["tunewire.job_id"] == job.id


def test_tracing_is_off_without_an_endpoint(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert tracing.configure_from_env("tunewire-test") is False
    assert not tracing.enabled()
    assert tracing.start_rpc_span("/a.B/C", "r") is None
