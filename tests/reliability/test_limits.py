"""Every limit that protects a server, hit on purpose: each answers with its own clear status."""

from __future__ import annotations

import threading
import time

import grpc
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.embedder.app import Settings as EmbedderSettings
from services.embedder.app import start as start_embedder
from services.trainer.admission import Admission
from services.trainer.app import Settings as TrainerSettings
from services.trainer.app import start as start_trainer
from services.trainer.context import JobContext, JobResult
from services.trainer.datasets import DatasetStore
from services.trainer.job_store import JobStore
from services.trainer.runner import JobRunner
from services.trainer.service import TrainerCore
from services.trainer.servicer import TrainerServicer
from tests.reliability.conftest import code_of
from tunewire.errors import ResourceExhausted, from_rpc_error
from tunewire.server import ServerSecurity, ServerSettings, Service, channel_options, create_server
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc, trainer_pb2, trainer_pb2_grpc

CONFIG = {
    "input_features": [
        {"name": "text", "type": "text", "encoder": {"pretrained_model_name_or_path": "/m"}}
    ],
    "output_features": [{"name": "label", "type": "binary"}],
}


@pytest.fixture(scope="module")
def embedder(tmp_path_factory, minilm):
    app = start_embedder(
        EmbedderSettings(
            port=0, data_dir=tmp_path_factory.mktemp("emb"), max_texts=8, preload=[minilm]
        )
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}", options=channel_options())
    yield embedder_pb2_grpc.EmbedderServiceStub(channel)
    channel.close()
    app.stop()


def upload(stub, data: bytes, name: str = "d.csv") -> trainer_pb2.Dataset:
    return stub.UploadDataset(
        iter(
            [
                trainer_pb2.UploadDatasetRequest(
                    metadata=trainer_pb2.UploadDatasetRequest.Metadata(filename=name)
                ),
                trainer_pb2.UploadDatasetRequest(chunk=data),
            ]
        )
    )


def test_texts_per_request_and_text_length(embedder, minilm):
    spec = embedder_pb2.EncoderSpec(model=minilm, max_length=16)
    with pytest.raises(grpc.RpcError) as info:
        embedder.Embed(embedder_pb2.EmbedRequest(encoder=spec, texts=["a"] * 9))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(info.value).field == "texts"
    huge = "é" * (1 << 19) + "x"  # 1 MiB + 1 byte of UTF-8
    with pytest.raises(grpc.RpcError) as info:
        embedder.Embed(embedder_pb2.EmbedRequest(encoder=spec, texts=["ok", huge]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(info.value).field == "texts[1]"
    # Under the cap a long text is truncated to max_length tokens, so it embeds like its prefix.
    long_text = "word " * 20_000
    resp = embedder.Embed(embedder_pb2.EmbedRequest(encoder=spec, texts=[long_text, "word " * 40]))
    import numpy as np

    from tunewire.tensors import from_proto

    vectors = from_proto(resp.embeddings)
    assert vectors.shape == (2, 384) and np.allclose(vectors[0], vectors[1], atol=1e-5)


def test_message_size_is_resource_exhausted(tmp_path):
    core = TrainerCore(tmp_path, embedder_address=None)
    core.start()
    running = create_server(
        [
            Service(
                "tunewire.v1.TrainerService",
                TrainerServicer(core),
                trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
            )
        ],
        ServerSettings(max_message_bytes=64 * 1024),
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        code = code_of(lambda: upload(stub, b"t,label\n" + b"x,1\n" * 40_000))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        channel.close()
    finally:
        running.stop(None)
        core.close()


def test_data_set_size_limit_leaves_nothing_behind(tmp_path):
    app = start_trainer(TrainerSettings(data_dir=tmp_path, port=0, max_dataset_bytes=1000))
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            upload(stub, b"t,label\n" + b"some text,1\n" * 200)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1000 bytes" in info.value.details()
        assert upload(stub, b"t,label\nsmall,1\n").rows == 1
        leftovers = [p.name for p in (tmp_path / "datasets").iterdir() if p.name.startswith(".")]
        assert leftovers == []
        channel.close()
    finally:
        app.running.stop(None)
        app.close()


def test_unary_calls_beyond_the_cap_are_resource_exhausted_and_streams_do_not_count():
    """--max-concurrent-rpcs counts unary calls in progress; open streams are capped per
    principal instead, so two Health.Watch streams do not fill a cap of 2."""
    release, entered = threading.Event(), threading.Semaphore(0)

    def hold(_request, _context):
        entered.release()
        release.wait(10)
        return b"done"

    def add(_servicer, server) -> None:
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "tunewire.test.Hold", {"Hold": grpc.unary_unary_rpc_method_handler(hold)}
                )
            ]
        )

    running = create_server(
        [Service("tunewire.test.Hold", None, add)],
        ServerSettings(security=ServerSecurity(max_concurrent_rpcs=2)),
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
        for w in watches:
            next(w)
        hold_call = channel.unary_unary("/tunewire.test.Hold/Hold")
        in_flight = [hold_call.future(b"", timeout=20) for _ in range(2)]
        for _ in in_flight:
            assert entered.acquire(timeout=10)
        assert code_of(lambda: hold_call(b"", timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status  # still answers
        release.set()
        assert [f.result() for f in in_flight] == [b"done", b"done"]
        assert hold_call(b"", timeout=10) == b"done"  # the freed slots are reused
        for w in watches:
            w.cancel()
    finally:
        release.set()
        channel.close()
        running.stop(None).wait(5)


@pytest.fixture
def datasets(tmp_path):
    store = DatasetStore(tmp_path / "datasets")
    df = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["0", "1"] * 10})
    return store, store.put([df.to_csv(index=False).encode()], "d.csv").id


def slow_recipe(ctx: JobContext) -> JobResult:
    """Works until cancelled, checking the flag the way the real recipes do."""
    while True:
        ctx.check_cancelled()
        time.sleep(0.02)


def wait_state(store: JobStore, job_id: str, states, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while store.get(job_id).state not in states:
        assert time.monotonic() < deadline, store.get(job_id).state
        time.sleep(0.02)
    return store.get(job_id)


def test_job_over_its_wall_clock_limit_fails_with_the_reason(tmp_path, datasets):
    store_ds, ds_id = datasets
    store = JobStore(tmp_path / "jobs")
    runner = JobRunner(
        store,
        Admission(store_ds),
        tmp_path / "artifacts",
        dispatcher=lambda _: slow_recipe,
        max_job_seconds=0.5,
    )
    runner.start()
    try:
        rec = runner.submit(CONFIG, dataset_id=ds_id)
        done = wait_state(store, rec.id, ("FAILED", "CANCELLED", "SUCCEEDED"))
        assert done.state == "FAILED" and "wall-clock limit of 0.5 s" in done.error
        assert done.end_time - done.start_time < 5
        # A user's cancel is still CANCELLED, not a timeout.
        runner.max_job_seconds = 30
        rec = runner.submit(CONFIG, dataset_id=ds_id)
        wait_state(store, rec.id, ("RUNNING",))
        runner.cancel(rec.id)
        assert wait_state(store, rec.id, ("FAILED", "CANCELLED")).state == "CANCELLED"
    finally:
        runner.stop()


def test_wall_clock_counts_from_the_first_start_across_restarts(tmp_path, datasets):
    store_ds, ds_id = datasets
    store = JobStore(tmp_path / "jobs")
    first = JobRunner(
        store, Admission(store_ds), tmp_path / "artifacts", dispatcher=lambda _: slow_recipe
    )
    rec = first.submit(CONFIG, dataset_id=ds_id)
    # What a trainer killed two minutes into the job leaves on disk.
    store.update(rec.id, state="RUNNING", attempts=1, start_time=time.time() - 120)
    reopened = JobStore(tmp_path / "jobs")
    again = JobRunner(
        reopened,
        Admission(store_ds),
        tmp_path / "artifacts",
        dispatcher=lambda _: slow_recipe,
        max_job_seconds=60,
    )
    again.start()
    try:
        done = wait_state(reopened, rec.id, ("FAILED", "SUCCEEDED", "CANCELLED"))
        assert done.state == "FAILED" and "wall-clock limit" in done.error
        assert done.attempts == 2
    finally:
        again.stop()


def test_job_queue_cap_is_resource_exhausted(tmp_path, datasets):
    store_ds, ds_id = datasets
    store = JobStore(tmp_path / "jobs")
    runner = JobRunner(
        store,
        Admission(store_ds),
        tmp_path / "artifacts",
        dispatcher=lambda _: slow_recipe,
        max_queued_jobs=2,
    )  # not started: jobs stay QUEUED
    runner.submit(CONFIG, dataset_id=ds_id)
    runner.submit(CONFIG, dataset_id=ds_id)
    with pytest.raises(ResourceExhausted) as info:
        runner.submit(CONFIG, dataset_id=ds_id)
    assert info.value.reason == "JOB_QUEUE_FULL"
