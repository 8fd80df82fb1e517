"""A client that goes away mid-stream frees the server's work: the server-side stream (an async
generator on the server's event loop) ends, instead of serving a dead stream until the job ends."""

from __future__ import annotations

import threading
import time

import grpc

from services.embedder.app import Settings as EmbedderSettings
from services.embedder.app import start as start_embedder
from services.trainer.app import Settings as TrainerSettings
from services.trainer.app import start as start_trainer
from tests.reliability.test_streams import queued_job
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc, trainer_pb2, trainer_pb2_grpc


class Tracked:
    """Wraps an async generator function; `open` counts generators that have not finished."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.open = 0
        self.lock = threading.Lock()

    async def __call__(self, *args, **kwargs):
        with self.lock:
            self.open += 1
        try:
            async for item in self.fn(*args, **kwargs):
                yield item
        finally:
            with self.lock:
                self.open -= 1


def track(monkeypatch, cls, name: str) -> Tracked:
    """Track `cls.name` (patched before a server registers the servicer's bound methods)."""
    tracked = Tracked(getattr(cls, name))

    async def method(self, request, context):
        async for item in tracked(self, request, context):
            yield item

    monkeypatch.setattr(cls, name, method)
    return tracked


def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the server kept working for a gone client"
        time.sleep(0.05)


def test_cancelled_watch_job_stops_the_server_generator(tmp_path, monkeypatch):
    from services.trainer.servicer import TrainerServicer

    follow = track(monkeypatch, TrainerServicer, "WatchJob")
    app = start_trainer(TrainerSettings(data_dir=tmp_path, port=0))
    try:
        job_id = queued_job(app)
        channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        calls = [stub.WatchJob(trainer_pb2.WatchJobRequest(id=job_id)) for _ in range(3)]
        for call in calls:
            assert next(call).state_change.state == trainer_pb2.Job.QUEUED
        assert follow.open == 3
        calls[0].cancel()
        wait_until(lambda: follow.open == 2)
        channel.close()  # the whole connection goes: the other two end as well
        wait_until(lambda: follow.open == 0)
    finally:
        app.running.stop(None)


def test_cancelled_stream_embed_ends_the_server_stream(tmp_path, minilm, monkeypatch):
    from services.embedder.servicer import EmbedderServicer

    stream = track(monkeypatch, EmbedderServicer, "StreamEmbed")
    app = start_embedder(EmbedderSettings(port=0, data_dir=tmp_path, preload=[minilm]))
    channel = grpc.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        spec = embedder_pb2.EncoderSpec(model=minilm, max_length=16)
        stop = threading.Event()

        def requests():
            i = 0
            while not stop.is_set():
                i += 1
                yield embedder_pb2.EmbedRequest(encoder=spec, texts=[f"disconnect {i}"] * 4)
                time.sleep(0.02)

        call = embedder_pb2_grpc.EmbedderServiceStub(channel).StreamEmbed(requests())
        for _ in range(3):
            assert len(next(call).embeddings.shape) == 2
        assert stream.open == 1
        call.cancel()
        wait_until(lambda: stream.open == 0)
        stop.set()
    finally:
        channel.close()
        app.stop()
