"""Fetching a GPU batch's vectors off the launching thread: one "lander" thread per loaded model.

Until 2026-12-03 a GPU batch was launched by whichever request thread held the model lock
(flat combining, batching.py), and that thread then waited for the batch's vectors itself, a
launch slot held for two batches' time: a request whose own rows were done stayed unanswered
while it waited for a batch of other requests' rows it had launched, and a request thread still
queueing its tokenised chunks stopped queueing them for as long (the stream's answers went out in
pairs, and its window slid by two requests at once; bench/embedder_pipeline_sim.py). Here the
launcher (launching.py) hands the launched batch to the model's lander and goes on at once;
the lander waits for the device's event (batches finish in launch order, as one CUDA stream
runs them), gives the launch slot back, and delivers the vectors to their requests.

The thread is started on the first batch and ends after `IDLE_SECONDS` without one (a model
evicted from the registry leaves no thread behind).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import structlog

from services.embedder.encoder import Launched

log = structlog.get_logger(__name__)

IDLE_SECONDS = 5.0


@dataclass
class _Landing:
    launched: Launched
    rows: list
    done: Callable[[np.ndarray | None, BaseException | None], None]


class Lander:
    """Waits for launched batches in launch order and hands each its vectors (or its error)."""

    def __init__(self, name: str = "lander") -> None:
        self._name = name
        self._queue: queue.SimpleQueue[_Landing] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(
        self,
        launched: Launched,
        rows: list,
        done: Callable[[np.ndarray | None, BaseException | None], None],
    ) -> None:
        """Wait for `launched` on the lander's thread, then call `done(vectors, None)` - or
        `done(None, error)` when fetching the vectors failed (a device error surfaces there)."""
        with self._lock:
            self._queue.put(_Landing(launched, rows, done))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                landing = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            try:
                vectors = landing.launched.result().numpy()
            except Exception as exc:  # noqa: BLE001 - to every request with rows in the batch
                landing.done(None, exc)
                continue
            try:
                landing.done(vectors, None)
            except Exception:  # noqa: BLE001 - never let one delivery stop the thread
                log.exception("delivering a batch failed")
