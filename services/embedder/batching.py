"""Token-budget batching, and the per-model queue through which concurrent requests share batches.

A fixed batch size pads every text to the longest one in its batch; sorting by length and filling
each batch up to `max_batch_tokens` padded tokens (rows x longest row) keeps padding small and
lets many short texts share one forward pass while a few long ones get a batch of their own.
A packed (padding-free) model has no padding: its budget counts real tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tunewire.errors import ResourceExhausted

DEFAULT_MAX_BATCH_TOKENS = 16384
# Tokens waiting per model before new requests are refused (RESOURCE_EXHAUSTED).
DEFAULT_MAX_QUEUED_TOKENS = 1 << 20


@dataclass(frozen=True)
class Batch:
    """Positions (into the caller's list) of the texts computed together."""

    index: list[int]
    padded_length: int

    @property
    def padded_tokens(self) -> int:
        return len(self.index) * self.padded_length


def plan_batches(
    lengths: list[int], max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, packed: bool = False
) -> list[Batch]:
    """Batches over `lengths` (token counts), longest first, each within `max_batch_tokens`
    (rows x longest, or the sum of lengths when `packed`).

    Longest first so that the largest activation is allocated at the start of a request, not
    after minutes of work. A text longer than the budget gets a batch to itself."""
    if max_batch_tokens <= 0:
        raise ValueError("max_batch_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    if packed:
        return _plan_packed(lengths, order, max_batch_tokens)
    batches: list[Batch] = []
    current: list[int] = []
    longest = 0
    for i in order:
        # Sorted descending: the first text of a batch is its longest, so padding is fixed.
        width = longest or max(lengths[i], 1)
        if current and (len(current) + 1) * width > max_batch_tokens:
            batches.append(Batch(current, longest))
            current, longest = [], 0
            width = max(lengths[i], 1)
        current.append(i)
        longest = width
    if current:
        batches.append(Batch(current, longest))
    return batches


def _plan_packed(lengths: list[int], order: list[int], max_batch_tokens: int) -> list[Batch]:
    batches: list[Batch] = []
    current: list[int] = []
    total = 0
    for i in order:
        tokens = max(lengths[i], 1)
        if current and total + tokens > max_batch_tokens:
            batches.append(Batch(current, max(lengths[current[0]], 1)))
            current, total = [], 0
        current.append(i)
        total += tokens
    if current:
        batches.append(Batch(current, max(lengths[current[0]], 1)))
    return batches


@dataclass(frozen=True)
class RunKey:
    """What rows must agree on to share one forward pass."""

    pooling: str
    layer: int
    normalize: bool


class PendingRequest:
    """One request's rows in the queue; filled in by whichever thread runs their batch."""

    def __init__(self, n: int, key: RunKey, cancelled: Callable[[], bool] | None = None) -> None:
        self.key = key
        self._vectors: list[np.ndarray | None] = [None] * n
        self._remaining = n
        self._queued = 0  # rows handed to the queue so far (`BatchQueue.extend`)
        self._filling = n > 0  # counted in `BatchQueue.filling` until all rows are queued
        self.error: BaseException | None = None
        self.cancelled = cancelled or (lambda: False)
        self._finished = threading.Event()
        if n == 0:
            self._finished.set()

    @property
    def done(self) -> bool:
        return self._remaining == 0 or self.error is not None

    def wait(self, timeout: float) -> bool:
        """Block until done or `timeout` s (rows taken by another thread's batch in flight)."""
        return self._finished.wait(timeout)

    def _fail(self, error: BaseException) -> None:
        self.error = error
        self._finished.set()

    def result(self) -> np.ndarray:
        if self.error is not None:
            raise self.error
        return np.stack(self._vectors) if self._vectors else np.empty((0, 0), np.float32)


@dataclass
class _Row:
    request: PendingRequest
    index: int
    ids: list[int]

    @property
    def tokens(self) -> int:
        return max(len(self.ids), 1)


class BatchQueue:
    """The rows waiting for one model, from every request (two calls: `append`, `next_batch`;
    or `open` then `extend` per chunk, for a request whose texts are still being tokenised).

    On a CPU there is no worker thread: whichever request thread holds the model lock takes the
    next batch - which may hold other requests' rows - runs it and delivers the vectors (flat
    combining); on a GPU the model's launcher thread takes and launches batches and its lander
    delivers them (launching.py, landing.py). Either way concurrent small requests share forward
    passes, the batch holding the oldest row goes first (no starvation), and a full queue is
    RESOURCE_EXHAUSTED at once rather than a hang. Callers hold the model lock around
    `next_batch` + the launch.

    Packed rows go into batches in arrival order (the oldest request's rows first), so that
    requests finish one after another: ordered by length across every queued request, a
    stream's 4 requests in the window finished together, and the device then waited while the
    next 4 were read and tokenised (bench/embedder_pipeline_sim.py). `filling` counts requests
    whose rows are still being tokenised: while a batch is on the device and more rows are on
    their way, the next batch waits for enough tokens (`next_batch`'s `min_tokens`: half the
    budget on a GPU) rather than going out as a scrap that leaves the device a short queue."""

    def __init__(self, max_queued_tokens: int = DEFAULT_MAX_QUEUED_TOKENS) -> None:
        self.max_queued_tokens = max_queued_tokens
        self._lock = threading.Lock()
        # Notified when rows are queued, computed, failed or dropped (`wait_for_change`).
        self._changed = threading.Condition(self._lock)
        self._generation = 0
        self._filling = 0  # requests opened whose rows are not all queued yet
        # False: packed batches too are the length-sorted batch holding the oldest row, as
        # before 2026-12-03 (kept so that bench/embedder_throughput.py measures both in one run).
        self.arrival_order = True
        self._rows: list[_Row] = []  # arrival order
        self._queued_tokens = 0
        self.dropped_rows = 0  # rows of clients that went away, removed uncomputed

    def append(
        self, input_ids: list[list[int]], key: RunKey, cancelled: Callable[[], bool] | None = None
    ) -> PendingRequest:
        """Queue a request's rows; `cancelled` says when its client went away (rows dropped)."""
        request = self.open(len(input_ids), key, cancelled)
        self.extend(request, input_ids)
        return request

    def open(
        self, n: int, key: RunKey, cancelled: Callable[[], bool] | None = None
    ) -> PendingRequest:
        """A request of `n` rows, none queued yet: `extend` queues them in order."""
        request = PendingRequest(n, key, cancelled)
        if request._filling:
            with self._lock:
                self._filling += 1
        return request

    def extend(self, request: PendingRequest, input_ids: list[list[int]]) -> None:
        """Queue the request's next rows. Its first rows are refused (RESOURCE_EXHAUSTED) when
        they would overfill the queue; later rows of a request so admitted never are (its first
        rows may be computing already), so the queue can exceed its limit by the requests still
        being tokenised, as an empty queue already lets one oversized request in."""
        start = request._queued
        if start + len(input_ids) > len(request._vectors):
            raise ValueError(
                f"{start + len(input_ids)} rows for a request of {len(request._vectors)}"
            )
        rows = [_Row(request, start + i, ids) for i, ids in enumerate(input_ids)]
        tokens = sum(row.tokens for row in rows)
        with self._lock:
            if start == 0 and self._rows and self._queued_tokens + tokens > self.max_queued_tokens:
                if request._filling:  # refused: none of its rows will come
                    request._filling = False
                    self._filling -= 1
                raise ResourceExhausted(
                    f"the embedder queue holds {self._queued_tokens} tokens; {tokens} more "
                    f"exceed its {self.max_queued_tokens} token limit: retry later",
                    reason="QUEUE_FULL",
                )
            self._rows.extend(rows)
            self._queued_tokens += tokens
            request._queued += len(rows)
            if request._filling and request._queued == len(request._vectors):
                request._filling = False
                self._filling -= 1
            self._notify()

    @property
    def filling(self) -> int:
        """Requests opened whose rows are not all queued yet (more rows on their way)."""
        with self._lock:
            return self._filling

    def wait_for_change(self, timeout: float) -> None:
        """Block until rows are queued, computed, failed or dropped, or `timeout` s."""
        with self._changed:
            generation = self._generation
            self._changed.wait_for(lambda: self._generation != generation, timeout)

    def _notify(self) -> None:  # under self._lock
        self._generation += 1
        self._changed.notify_all()

    @property
    def queued_tokens(self) -> int:
        with self._lock:
            return self._queued_tokens

    def next_batch(
        self, max_batch_tokens: int, packed: bool = False, min_tokens: int = 0
    ) -> list[_Row]:
        """The token-budget batch that holds the oldest row, among rows of the same RunKey:
        packed, the rows in arrival order that fit (first fit); padded, the length-sorted
        batch that holds it (least padding). Rows of requests whose client went away are
        dropped first, never computed. While a request is still queueing rows, none ([])
        unless `min_tokens` are queued."""
        with self._lock:
            gone = [row for row in self._rows if row.request.cancelled()]
            if gone:
                self._remove(gone)
                self.dropped_rows += len(gone)
            if not self._rows:
                return []
            if self._filling and self._queued_tokens < min_tokens:
                return []
            key = self._rows[0].request.key
            candidates = [row for row in self._rows if row.request.key == key]
            if packed and self.arrival_order:
                taken = _first_fit(candidates, max_batch_tokens)
            else:
                lengths = [len(row.ids) for row in candidates]
                plan = plan_batches(lengths, max_batch_tokens, packed)
                chosen = next(batch for batch in plan if 0 in batch.index)
                taken = [candidates[i] for i in chosen.index]
            self._remove(taken)
        return taken

    def deliver(self, rows: list[_Row], vectors: np.ndarray) -> None:
        with self._lock:  # batches of one model may now finish in several threads at once
            for row, vector in zip(rows, vectors, strict=True):
                row.request._vectors[row.index] = vector
                row.request._remaining -= 1
                if row.request._remaining == 0:
                    row.request._finished.set()
            self._notify()

    def fail(self, rows: list[_Row], error: BaseException) -> None:
        """Fail every request that had a row in a failed batch, and drop its other rows."""
        for request in {id(row.request): row.request for row in rows}.values():
            request._fail(error)
            self.cancel(request)

    def cancel(self, request: PendingRequest) -> None:
        """Drop a request's queued rows (it failed, or its client went away: then counted)."""
        with self._lock:
            rows = [row for row in self._rows if row.request is request]
            self._remove(rows)
            if request.cancelled():
                self.dropped_rows += len(rows)
            if request._filling:  # no more of its rows will come
                request._filling = False
                self._filling -= 1
            self._notify()

    def _remove(self, rows: list[_Row]) -> None:
        gone = {id(row) for row in rows}
        self._rows = [row for row in self._rows if id(row) not in gone]
        self._queued_tokens -= sum(row.tokens for row in rows)

    @property
    def pending_rows(self) -> int:
        with self._lock:
            return len(self._rows)


def _first_fit(rows: list[_Row], max_batch_tokens: int) -> list[_Row]:
    """Rows in arrival order, each taken if it still fits the budget (the first always: a row
    longer than the budget gets a batch to itself)."""
    taken: list[_Row] = []
    total = 0
    for row in rows:
        if taken and total + row.tokens > max_batch_tokens:
            if total >= max_batch_tokens:  # nothing more can fit
                break
            continue
        taken.append(row)
        total += row.tokens
    return taken
