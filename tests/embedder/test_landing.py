"""The GPU pipeline on a CPU: packed batches in arrival order, no scrap of a batch behind one on
the device while rows are being tokenised, and launched batches fetched and delivered by the
model's lander thread (landing.py), so the launching thread never waits for the device. MiniLM's
encoder is given the GPU's arrangement (launch slots instead of CPU passes); its launches are
real, their results fetched late as a GPU's are."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from services.embedder.batching import BatchQueue, RunKey
from services.embedder.encoder import GPU_BATCHES_IN_FLIGHT, Launched
from services.embedder.service import EncoderSpec
from tests.embedder.conftest import WORDS, rel_error, served
from tunewire.server import channel_options
from tunewire.tensors import from_proto
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc

MEAN = RunKey("mean", 0, False)


def test_packed_batches_take_rows_in_arrival_order_first_fit():
    queue = BatchQueue()
    a = queue.append([[1] * 10, [1] * 30], MEAN)
    b = queue.append([[1] * 25, [1] * 5], MEAN)
    first = queue.next_batch(40, packed=True)
    assert [(row.request is a, row.index) for row in first] == [(True, 0), (True, 1)]
    second = queue.next_batch(40, packed=True)
    assert [(row.request is b, row.index) for row in second] == [(True, 0), (True, 1)]
    # As before when arrival order is off: the length-sorted batch that holds the oldest row.
    queue.arrival_order = False
    queue.append([[1] * 10], MEAN)
    queue.append([[1] * 35], MEAN)
    queue.append([[1] * 25], MEAN)
    assert [len(row.ids) for row in queue.next_batch(40, packed=True)] == [25, 10]


def test_first_fit_skips_a_row_that_does_not_fit_for_a_later_one_that_does():
    queue = BatchQueue()
    queue.append([[1] * 30, [1] * 20, [1] * 10], MEAN)
    assert [len(row.ids) for row in queue.next_batch(40, packed=True)] == [30, 10]
    assert [len(row.ids) for row in queue.next_batch(40, packed=True)] == [20]


def test_a_short_batch_waits_while_rows_are_on_their_way():
    queue = BatchQueue()
    filling = queue.open(3, MEAN)
    queue.extend(filling, [[1] * 10])
    assert queue.filling == 1
    assert queue.next_batch(100, packed=True, min_tokens=50) == []
    queue.extend(filling, [[1] * 10, [1] * 10])  # all its rows are in: no more coming
    assert queue.filling == 0
    assert len(queue.next_batch(100, packed=True, min_tokens=50)) == 3
    # Enough tokens go out even while rows are coming.
    other = queue.open(2, MEAN)
    queue.extend(other, [[1] * 60])
    assert len(queue.next_batch(100, packed=True, min_tokens=50)) == 1
    queue.cancel(other)  # it will never send its last row
    assert queue.filling == 0


def test_a_refused_request_is_not_counted_as_on_its_way():
    queue = BatchQueue(max_queued_tokens=10)
    queue.append([[1] * 8], MEAN)
    refused = queue.open(1, MEAN)
    with pytest.raises(Exception, match="token limit"):
        queue.extend(refused, [[1] * 5])
    assert queue.filling == 0


def test_waiting_for_a_change_wakes_when_vectors_arrive():
    queue = BatchQueue()
    request = queue.append([[1, 2]], MEAN)
    rows = queue.next_batch(100, packed=True)
    timer = threading.Timer(0.05, queue.deliver, (rows, np.zeros((1, 2), np.float32)))
    start = time.monotonic()
    timer.start()
    queue.wait_for_change(10)
    assert time.monotonic() - start < 5 and request.done


class _LateLaunch(Launched):
    """A launch whose vectors are fetched after `delay` s, recording the fetching thread."""

    def __init__(self, inner: Launched, delay: float, fetched_on: list[str], fail: bool) -> None:
        super().__init__(inner.vectors, None)
        self._delay, self._fetched_on, self._fail = delay, fetched_on, fail

    def result(self):
        time.sleep(self._delay)
        self._fetched_on.append(threading.current_thread().name)
        if self._fail:
            raise RuntimeError("the device was lost")
        return self.vectors


@pytest.fixture
def gpu_like(minilm_path, registry, monkeypatch):
    """MiniLM's encoder with the GPU's arrangement; yields (encoder, entry, fetched_on, fail)."""
    entry = registry.get(minilm_path)
    encoder = entry.encoder
    encoder.load()
    real_launch = encoder.launch
    fetched_on: list[str] = []
    fail = threading.Event()

    def launch(input_ids, **kw):
        fetched_on.append(f"launched on {threading.current_thread().name}")
        return _LateLaunch(real_launch(input_ids, **kw), 0.02, fetched_on, fail.is_set())

    monkeypatch.setattr(encoder, "passes", None)
    monkeypatch.setattr(encoder, "launches", threading.BoundedSemaphore(GPU_BATCHES_IN_FLIGHT))
    monkeypatch.setattr(encoder, "launch", launch)
    yield encoder, entry, fetched_on, fail
    assert entry.in_flight == 0
    for launcher in list(entry.launchers.values()):  # the session's registry is shared
        launcher.stop()
    entry.launchers.clear()


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 30)))) for _ in range(n)]


def test_concurrent_requests_get_their_own_vectors_in_order(service, gpu_like):
    encoder, entry, fetched_on, _ = gpu_like
    service.max_batch_tokens = 200  # many batches, shared between the requests
    requests = [_texts(40, seed) for seed in range(4)]
    expected = [
        encoder.run(encoder.tokenize(texts, 512), pooling="mean", layer=0, normalize=False)
        for texts in requests
    ]
    spec = EncoderSpec(model=str(encoder.source.path))
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda texts: service.embed(spec, texts).vectors, requests))
    for vectors, reference in zip(got, expected, strict=True):
        assert rel_error(vectors, reference) < 1e-5
    # Every batch the service launched was fetched by the lander, not by a request's thread.
    # And launched by the model's launcher thread, not by a request's.
    served = fetched_on[2 * len(requests) :]
    assert served.count("lander") > len(requests)
    assert set(served) == {"lander", "launched on launcher"}
    gate = encoder.launches
    assert all(gate.acquire(blocking=False) for _ in range(GPU_BATCHES_IN_FLIGHT))


def test_a_device_error_fails_the_batch_requests_and_frees_the_slots(service, gpu_like):
    encoder, entry, _, fail = gpu_like
    spec = EncoderSpec(model=str(encoder.source.path))
    fail.set()
    with pytest.raises(RuntimeError, match="device was lost"):
        service.embed(spec, ["a text the device never returns"])
    fail.clear()
    assert service.embed(spec, ["the next request is served"]).vectors.shape[0] == 1
    gate = encoder.launches
    assert all(gate.acquire(blocking=False) for _ in range(GPU_BATCHES_IN_FLIGHT))


def test_stream_embed_on_the_gpu_pipeline_answers_in_order(tmp_path, registry, gpu_like):
    encoder, _, fetched_on, _ = gpu_like
    requests = [_texts(60, seed) for seed in range(10, 16)]
    expected = [
        encoder.run(encoder.tokenize(texts, 512), pooling="mean", layer=0, normalize=False)
        for texts in requests
    ]
    with served(tmp_path / "cache", registry) as (service, address):
        service.max_batch_tokens = 300
        with grpc.insecure_channel(address, options=channel_options()) as channel:
            stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
            spec = embedder_pb2.EncoderSpec(model=str(encoder.source.path))
            replies = list(
                stub.StreamEmbed(
                    (embedder_pb2.EmbedRequest(encoder=spec, texts=t) for t in requests),
                    timeout=120,
                )
            )
    # Many batches, each fetched by the lander (the counters may be another service's: the
    # session's registry, so its queue and launchers, is shared).
    assert fetched_on.count("lander") > len(requests)
    got = [from_proto(reply.embeddings) for reply in replies]
    assert [len(v) for v in got] == [len(t) for t in requests]
    for vectors, reference in zip(got, expected, strict=True):
        assert rel_error(vectors, reference) < 1e-5


def test_the_launcher_ends_when_idle_and_starts_again_on_wake(monkeypatch):
    from services.embedder import launching

    monkeypatch.setattr(launching, "IDLE_SECONDS", 0.05)
    steps: list[str] = []
    launcher = launching.Launcher(
        lambda: steps.append(threading.current_thread().name) and False, time.sleep
    )
    launcher.wake()
    _wait_for(lambda: launcher._thread is None and steps)
    first = len(steps)
    launcher.wake()
    _wait_for(lambda: len(steps) > first)
    assert set(steps) == {"launcher"}


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_next_batch_waits_for_twice_the_tokens_on_the_device_up_to_half_a_budget(
    service, gpu_like
):
    """A stream starts on small batches that double as rows arrive (EmbedderService
    `_least_tokens`): nothing on the device, anything goes; then twice what is on it, at most
    half the budget; with the ramp off, half the budget as before."""
    _, entry, _, _ = gpu_like
    service.max_batch_tokens = 1000
    assert service._least_tokens(entry) == 0  # whatever the first chunk holds
    entry.in_flight_change(1, 120)
    try:
        assert service._least_tokens(entry) == 240
        entry.in_flight_change(1, 300)
        assert service._least_tokens(entry) == 500  # 840 capped at half the budget
        service.ramp = False
        entry.in_flight_change(-1, 300)
        assert service._least_tokens(entry) == 500
    finally:
        service.ramp = True
        entry.in_flight_change(-1, 120)
    assert entry.in_flight == 0 and entry.in_flight_tokens == 0
