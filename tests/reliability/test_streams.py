"""Long streams starve nothing (issue 17, part 1): open streams hold no server thread, stalled
client streams are closed by the idle timeout, and the stream caps refuse only the caller over
them. Real servers on 127.0.0.1 port 0; timeouts are generous and no latency is asserted."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.embedder.app import Settings as EmbedderSettings
from services.embedder.app import start as start_embedder
from services.trainer.app import Settings as TrainerSettings
from services.trainer.app import start as start_trainer
from services.trainer.context import StateChange
from services.trainer.job_store import JobRecord
from tests.reliability.conftest import code_of
from tunewire.errors import from_rpc_error
from tunewire.server import ServerSecurity
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc, trainer_pb2, trainer_pb2_grpc

# Four principals that train: token -> principal name.
TOKENS = {f"user{i}-tok-{i}a9c{i}": f"user{i}" for i in range(4)}


def wait_until(predicate, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def metadata(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def stalled_upload(release: threading.Event) -> Iterator[trainer_pb2.UploadDatasetRequest]:
    """An upload that sends its metadata and then nothing until `release`."""
    yield trainer_pb2.UploadDatasetRequest(
        metadata=trainer_pb2.UploadDatasetRequest.Metadata(filename="d.csv")
    )
    release.wait(60)


def queued_job(app, owner: str = "") -> str:
    """A job recorded as QUEUED but never given to the runner, so it stays queued and a
    WatchJob on it stays open; it belongs to `owner` (a principal's name)."""
    rec = app.core.jobs.create(
        JobRecord(
            id=f"job-{uuid.uuid4().hex[:12]}",
            state="QUEUED",
            config={},
            owner=owner,
            create_time=time.time(),
        )
    )
    app.core.jobs.append_event(rec.id, StateChange("QUEUED", "queued"))
    return rec.id


@pytest.fixture
def trainer(tmp_path):
    """A trainer with tokens; `start(**security)` starts it with those ServerSecurity fields."""
    tokens = tmp_path / "tokens"
    tokens.write_text("".join(f"{t} train {name}\n" for t, name in TOKENS.items()))
    apps = []

    def start(**security):
        app = start_trainer(
            TrainerSettings(
                data_dir=tmp_path / "data",
                port=0,
                security=ServerSecurity(auth_tokens_file=tokens, **security),
            )
        )
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.running.stop(None).wait(10)
        app.close()


def test_open_streams_starve_nothing(trainer):
    """32 Health.Watch, 32 stalled uploads and 16 WatchJob streams from 4 principals (80 open
    calls; the threaded server had 16 threads) leave Health.Check and unary RPCs answering."""
    app = trainer()
    tokens = list(TOKENS)
    jobs = {token: queued_job(app, TOKENS[token]) for token in tokens}
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    release = threading.Event()
    try:
        health = health_pb2_grpc.HealthStub(channel)
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(32)]
        for w in watches:
            assert next(w).status == health_pb2.HealthCheckResponse.SERVING
        uploads = [
            stub.UploadDataset.future(stalled_upload(release), metadata=metadata(tokens[0]))
            for _ in range(32)
        ]
        wait_until(
            lambda: app.running.open_streams(TOKENS[tokens[0]]) == 32, what="32 open uploads"
        )
        follows = [
            stub.WatchJob(
                trainer_pb2.WatchJobRequest(id=jobs[tokens[i % 4]]),
                metadata=metadata(tokens[i % 4]),
            )
            for i in range(16)
        ]
        for f in follows:
            assert next(f).state_change.state == trainer_pb2.Job.QUEUED
        assert app.running.open_streams() == 32

        check = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        listed = stub.ListJobs(
            trainer_pb2.ListJobsRequest(), metadata=metadata(tokens[3]), timeout=10
        )
        assert [j.id for j in listed.jobs] == [jobs[tokens[3]]]
        assert (
            stub.GetJob(
                trainer_pb2.GetJobRequest(id=jobs[tokens[1]]),
                metadata=metadata(tokens[1]),
                timeout=10,
            ).state
            == trainer_pb2.Job.QUEUED
        )
        for call in [*watches, *follows, *uploads]:
            call.cancel()
    finally:
        release.set()
        channel.close()


def test_a_silent_upload_is_closed_after_the_idle_timeout(trainer):
    app = trainer(stream_idle_timeout_s=0.5)
    token = list(TOKENS)[0]
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    release = threading.Event()
    try:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.UploadDataset(stalled_upload(release), metadata=metadata(token), timeout=30)
        err = from_rpc_error(info.value)
        assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert err.reason == "STREAM_IDLE"
        wait_until(lambda: app.running.open_streams(TOKENS[token]) == 0, what="slot freed")
        datasets = app.core.datasets.root
        wait_until(
            lambda: not [p for p in datasets.iterdir() if p.name.startswith(".")],
            what="the partial upload removed",
        )

        def slow() -> Iterator[trainer_pb2.UploadDatasetRequest]:
            """Slower in all than the timeout, but never silent for it."""
            yield trainer_pb2.UploadDatasetRequest(
                metadata=trainer_pb2.UploadDatasetRequest.Metadata(filename="d.csv")
            )
            yield trainer_pb2.UploadDatasetRequest(chunk=b"text,label\n")
            for i in range(6):
                time.sleep(0.2)
                yield trainer_pb2.UploadDatasetRequest(chunk=f"row {i},{i % 2}\n".encode())

        assert stub.UploadDataset(slow(), metadata=metadata(token), timeout=30).rows == 6
    finally:
        release.set()
        channel.close()


def test_the_stream_cap_refuses_only_the_caller_over_it(trainer):
    app = trainer(max_streams_per_principal=3)
    alice, bob = list(TOKENS)[:2]
    jobs = {token: queued_job(app, TOKENS[token]) for token in (alice, bob)}
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)

        def watch(token: str):
            call = stub.WatchJob(
                trainer_pb2.WatchJobRequest(id=jobs[token]), metadata=metadata(token), timeout=30
            )
            return call, next(call)

        alices = [watch(alice)[0] for _ in range(3)]
        with pytest.raises(grpc.RpcError) as info:
            watch(alice)
        err = from_rpc_error(info.value)
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.reason == "TOO_MANY_CALLS"
        # Nobody else notices: bob streams, alice's unary calls and open streams go on.
        bobs, first = watch(bob)
        assert first.state_change.state == trainer_pb2.Job.QUEUED
        assert (
            stub.GetJob(
                trainer_pb2.GetJobRequest(id=jobs[alice]), metadata=metadata(alice), timeout=10
            ).id
            == jobs[alice]
        )
        for call in [*alices, bobs]:
            call.cancel()
        wait_until(lambda: app.running.open_streams(TOKENS[alice]) == 0, what="slots freed")
        assert watch(alice)[1].state_change.state == trainer_pb2.Job.QUEUED
    finally:
        channel.close()


def test_health_watch_has_one_cap_per_server(trainer):
    app = trainer(max_health_watches=2)
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
        for w in watches:
            next(w)
        third = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert code_of(lambda: next(third)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        watches[0].cancel()
        wait_until(lambda: app.running.open_streams() == 1, what="a freed Health.Watch slot")
        again = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(again).status == health_pb2.HealthCheckResponse.SERVING
        for w in [watches[1], again]:
            w.cancel()
    finally:
        channel.close()


def test_stalled_stream_embeds_starve_nothing_and_time_out(tmp_path):
    """32 StreamEmbed calls that send nothing leave Health.Check and GetCacheStats answering,
    and are closed by the idle timeout (no model is needed for any of it)."""
    app = start_embedder(
        EmbedderSettings(
            port=0, data_dir=tmp_path, security=ServerSecurity(stream_idle_timeout_s=2.0)
        )
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    release = threading.Event()
    try:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)

        def silent() -> Iterator[embedder_pb2.EmbedRequest]:
            release.wait(60)
            return
            yield

        calls = [stub.StreamEmbed(silent(), timeout=60) for _ in range(32)]
        wait_until(lambda: app.running.open_streams("anonymous") == 32, what="32 open streams")
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        stub.GetCacheStats(embedder_pb2.GetCacheStatsRequest(), timeout=10)
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                next(call)
            assert from_rpc_error(info.value).reason == "STREAM_IDLE"
    finally:
        release.set()
        channel.close()
        app.stop()
