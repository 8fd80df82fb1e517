"""Launching a model's GPU batches from one thread of its own: the "launcher".

Until 2026-12-03 whichever request thread held the model lock took the queue's next batch and
launched it (flat combining). Through StreamEmbed on the H200 that left the GPU waiting for the
host for 18 % of a pass with the lander already in place (0.83 of 4.78 s;
bench/results/embedder_throughput_h200.md): a batch could go out only when a request thread came
by - between its own chunks, or while waiting for its rows - and each stream's threads were new
ones (each with its first launch to make). Here request threads only tokenise, queue
their rows and wait; the launcher takes the next batch as soon as a launch slot is free (the
lander gives slots back, landing.py) and the batch is worth launching (BatchQueue.next_batch's
`min_tokens`), and launches it. The CPU path keeps flat combining (a pass there is synchronous).

The thread is started by the first `wake` and ends after `IDLE_SECONDS` without a batch;
request threads call `wake` while they wait, so one that ended as rows arrived is started again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

IDLE_SECONDS = 5.0
# How long the thread waits for the queue's next change before looking again.
POLL_SECONDS = 0.05


class Launcher:
    """Calls `step` (launch the next batch if there is one; whether it did) on a thread of its
    own, waiting with `wait(timeout)` (the queue's next change) whenever step had nothing."""

    def __init__(
        self, step: Callable[[], bool], wait: Callable[[float], None], name: str = "launcher"
    ) -> None:
        self._step = step
        self._wait = wait
        self._name = name
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def wake(self) -> None:
        """Make sure the thread runs (rows were queued, or a request waits for its rows)."""
        with self._lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """End the thread for good (its service closed), at its next look for a batch."""
        with self._lock:
            self._stopped = True

    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            if self._stopped:
                with self._lock:
                    self._thread = None
                return
            try:
                launched = self._step()
            except Exception:  # noqa: BLE001 - a batch's failure reached its requests already
                log.exception("launching a batch failed")
                launched = False
            if launched:
                idle_since = time.monotonic()
                continue
            if time.monotonic() - idle_since > IDLE_SECONDS:
                with self._lock:
                    self._thread = None
                return
            self._wait(POLL_SECONDS)
