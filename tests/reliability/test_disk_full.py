"""A full disk, for real: a 1 MiB tmpfs under the services' data directory. Each write that hits
ENOSPC comes back as RESOURCE_EXHAUSTED (DISK_FULL) or a FAILED job saying so; nothing crashes,
nothing half-written stays, and the service works again once there is room."""

from __future__ import annotations

import subprocess
import time

import grpc
import pandas as pd
import pytest

from services.trainer.admission import Admission
from services.trainer.app import Settings as TrainerSettings
from services.trainer.app import start as start_trainer
from services.trainer.context import JobContext, JobResult, MetricValue
from services.trainer.datasets import DatasetStore
from services.trainer.job_store import JobStore
from services.trainer.runner import JobRunner
from tunewire.errors import from_rpc_error
from tunewire.v1 import trainer_pb2, trainer_pb2_grpc

CONFIG = {
    "input_features": [
        {"name": "text", "type": "text", "encoder": {"pretrained_model_name_or_path": "/m"}}
    ],
    "output_features": [{"name": "label", "type": "binary"}],
}


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def upload(stub, data: bytes, name: str = "d.csv"):
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


def test_upload_onto_a_full_disk_is_resource_exhausted_and_leaves_nothing(small_disk):
    app = start_trainer(TrainerSettings(data_dir=small_disk, port=0))
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            upload(stub, b"text,label\n" + b"a fairly long line of text,1\n" * 60_000)
        err = from_rpc_error(info.value)
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.reason == "DISK_FULL"
        assert "disk is full" in err.message
        assert not [p for p in (small_disk / "datasets").iterdir()]  # the partial file is gone
        assert upload(stub, b"text,label\nsmall,1\n").rows == 1  # room again: it works
    finally:
        channel.close()
        app.running.stop(None)
        app.close()


def test_job_writing_past_a_full_disk_fails_with_the_reason(small_disk, tmp_path):
    datasets = DatasetStore(tmp_path / "datasets")
    df = pd.DataFrame({"text": ["a", "b"], "label": ["0", "1"]})
    ds = datasets.put([df.to_csv(index=False).encode()], "d.csv")

    def big_artifact(ctx: JobContext) -> JobResult:
        ctx.artifact_dir.mkdir(parents=True)
        with open(ctx.artifact_dir / "weights.bin", "wb") as fh:
            for _ in range(64):
                fh.write(b"\0" * 65536)  # 4 MiB onto a 1 MiB disk
        return JobResult([MetricValue("test", "label", "accuracy", 1.0)])

    store = JobStore(small_disk / "jobs")
    runner = JobRunner(
        store, Admission(datasets), small_disk / "artifacts", dispatcher=lambda _: big_artifact
    )
    runner.start()
    try:
        rec = runner.submit(CONFIG, dataset_id=ds.id)
        deadline = time.monotonic() + 10
        while store.get(rec.id).state not in ("FAILED", "SUCCEEDED"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        done = store.get(rec.id)
        assert done.state == "FAILED" and "disk is full" in done.error
        assert list((small_disk / "artifacts").iterdir()) == []  # no staging, no artifact
        # The record on disk says so too: it was written after the staging was freed.
        assert "disk is full" in JobStore(small_disk / "jobs").get(rec.id).error
    finally:
        runner.stop()


def test_embedder_with_a_full_cache_disk_answers_without_internal(small_disk, minilm):
    from services.embedder.app import Settings as EmbedderSettings
    from services.embedder.app import start as start_embedder
    from tunewire.v1 import embedder_pb2, embedder_pb2_grpc

    app = start_embedder(EmbedderSettings(port=0, data_dir=small_disk, preload=[minilm]))
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        spec = embedder_pb2.EncoderSpec(model=minilm, max_length=8)
        codes = set()
        for batch in range(12):  # ~1.5 KiB per vector: the 1 MiB disk fills on the way
            texts = [f"disk {batch} {i}" for i in range(64)]
            try:
                stub.Embed(embedder_pb2.EmbedRequest(encoder=spec, texts=texts))
                codes.add(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.add(exc.code())
        assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes  # the disk did fill
    finally:
        channel.close()
        app.stop(None)


def _fill(disk, leave_pages: int) -> None:
    """Fill the tmpfs, then free `leave_pages` pages of 4 KiB."""
    import os

    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    size = os.fstat(fd).st_size
    os.ftruncate(fd, max(0, (size // 4096 - leave_pages) * 4096))
    os.close(fd)


@pytest.mark.parametrize("leave_pages", [0, 1])  # no room at all; room for the record only
def test_create_job_on_a_full_disk_leaves_no_job_behind(small_disk, tmp_path, leave_pages):
    """Was RESOURCE_EXHAUSTED with a QUEUED job left that never ran, and that the same
    request id kept returning."""
    import errno

    datasets = DatasetStore(tmp_path / "datasets")
    df = pd.DataFrame({"text": ["a", "b"], "label": ["0", "1"]})
    ds = datasets.put([df.to_csv(index=False).encode()], "d.csv")
    ran: list[str] = []

    def recipe(ctx: JobContext) -> JobResult:
        ran.append(ctx.job_id)
        ctx.artifact_dir.mkdir(parents=True)
        return JobResult([MetricValue("test", "label", "accuracy", 1.0)])

    store = JobStore(small_disk / "jobs")
    runner = JobRunner(
        store, Admission(datasets), small_disk / "artifacts", dispatcher=lambda _: recipe
    )
    runner.start()
    try:
        _fill(small_disk, leave_pages)
        with pytest.raises(OSError) as info:
            runner.submit(CONFIG, dataset_id=ds.id, request_id="retry-me")
        assert info.value.errno == errno.ENOSPC
        assert store.all() == [] and list((small_disk / "jobs").iterdir()) == []
        assert JobStore(small_disk / "jobs").all() == []  # nothing on disk for a restart
        (small_disk / "filler").unlink()
        rec = runner.submit(CONFIG, dataset_id=ds.id, request_id="retry-me")  # a new job
        deadline = time.monotonic() + 10
        while store.get(rec.id).state != "SUCCEEDED":
            assert time.monotonic() < deadline, store.get(rec.id)
            time.sleep(0.05)
        assert ran == [rec.id]
    finally:
        runner.stop()
