"""On a GPU the embedder holds at most `GPU_BATCHES_IN_FLIGHT` batches launched; requests that
arrive while both are out gather into the next batch (continuous batching) instead of each
launching a small pass of its own. A CPU test: MiniLM's encoder is given the GPU's gate, and its
launches are held unfinished, as a busy GPU holds them, until the test lets them end."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from services.embedder.encoder import GPU_BATCHES_IN_FLIGHT, Launched
from services.embedder.service import EncoderSpec


class _HeldLaunch(Launched):
    """A launch whose vectors are ready only once `release` is set (a GPU still computing)."""

    def __init__(self, inner: Launched, release: threading.Event) -> None:
        super().__init__(inner.vectors, None)
        self._release = release

    def result(self):
        assert self._release.wait(30)
        return self.vectors


def _wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_requests_arriving_while_the_gpu_is_busy_share_the_next_batch(
    service, minilm_path, monkeypatch
):
    spec = EncoderSpec(model=minilm_path)
    service.embed(spec, ["load the weights"])
    entry = service.registry.get(minilm_path)
    encoder = entry.encoder
    real_launch = encoder.launch
    launches: list[int] = []
    releases = [threading.Event() for _ in range(3)]

    def launch(input_ids, **kw):
        i = len(launches)
        launches.append(len(input_ids))
        return _HeldLaunch(real_launch(input_ids, **kw), releases[min(i, 2)])

    # The GPU's arrangement: launched under the lock, finished outside it, a gate of two.
    monkeypatch.setattr(encoder, "passes", None)
    monkeypatch.setattr(encoder, "launches", threading.BoundedSemaphore(GPU_BATCHES_IN_FLIGHT))
    monkeypatch.setattr(encoder, "launch", launch)
    texts = [f"text number {i} for the gate" for i in range(5)]
    with ThreadPoolExecutor(5) as pool:
        first = []
        for n, text in enumerate(texts[:2], 1):  # one at a time: each its own batch
            first.append(pool.submit(service.embed, spec, [text]))
            _wait_until(lambda n=n: len(launches) == n)
        # Two batches out: the gate is shut.
        later = [pool.submit(service.embed, spec, [t]) for t in texts[2:]]
        _wait_until(lambda: entry.queue.pending_rows == 3)
        time.sleep(0.05)
        assert len(launches) == 2  # nobody launched past the gate
        releases[0].set()  # the first batch ends: the three waiting texts go in one batch
        releases[2].set()
        releases[1].set()
        got = [f.result(30).vectors[0] for f in first + later]
    assert launches == [1, 1, 3]
    service.stop_launchers()  # the session's registry is shared with later tests
    alone = service.embed(spec, texts).vectors  # cached now; equal to the gated answers
    np.testing.assert_allclose(np.stack(got), alone, rtol=1e-6)


def test_a_lone_request_on_an_idle_gpu_launches_at_once(service, minilm_path, monkeypatch):
    spec = EncoderSpec(model=minilm_path)
    service.embed(spec, ["load the weights"])
    encoder = service.registry.get(minilm_path).encoder
    gate = threading.BoundedSemaphore(GPU_BATCHES_IN_FLIGHT)
    monkeypatch.setattr(encoder, "passes", None)
    monkeypatch.setattr(encoder, "launches", gate)
    got = service.embed(spec, ["nothing else is running"]).vectors
    service.stop_launchers()
    assert got.shape[0] == 1
    # Every slot is back: the gate holds nothing once the batch is delivered.
    assert all(gate.acquire(blocking=False) for _ in range(GPU_BATCHES_IN_FLIGHT))
