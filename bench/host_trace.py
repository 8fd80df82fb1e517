"""What the embedder's host does during a StreamEmbed pass, in time: a diagnostic for a bench.

`HostTrace` wraps a few of the server's methods (by class, so every thread's calls are seen) to
record when each call began and ended and on which thread, and Python's garbage collections
(`gc.callbacks`): receiving and beginning a request, tokenising a chunk, each launch and each
landing (and the lander's wait for the device), a request's computing, its cache write and its
response's encoding. `summary` prints them relative to the pass's start, the first `head_s` and
last `tail_s` seconds in full and totals per kind, so a GPU trace's gaps
(bench/embedder_throughput.py --grpc-gpu-trace) can be matched with what the host was doing.
Never used by the product.
"""

from __future__ import annotations

import functools
import gc
import inspect
import threading
import time
from collections import defaultdict
from contextlib import contextmanager


class HostTrace:
    def __init__(self) -> None:
        self.events: list[tuple[str, float, float, str]] = []  # (what, start, end, thread)
        self._lock = threading.Lock()
        self._gc_start: dict[int, float] = {}
        self.start = time.perf_counter()

    def _record(self, what: str, start: float, end: float) -> None:
        with self._lock:
            self.events.append((what, start, end, threading.current_thread().name))

    def _wrap(self, owner, name: str, what: str, detail=None) -> tuple:
        """`detail(args)`, if given, says more of each call (appended to `what`)."""
        original = inspect.getattr_static(owner, name)
        static = isinstance(original, staticmethod)
        function = original.__func__ if static else original

        @functools.wraps(function)
        def traced(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                label = what if detail is None else f"{what} {detail(args)}"
                self._record(label, start, time.perf_counter())

        setattr(owner, name, staticmethod(traced) if static else traced)
        return owner, name, original

    def _gc(self, phase: str, info: dict) -> None:
        key = threading.get_ident()
        if phase == "start":
            self._gc_start[key] = time.perf_counter()
        elif key in self._gc_start:
            self._record(
                f"gc gen{info['generation']}", self._gc_start.pop(key), time.perf_counter()
            )

    @contextmanager
    def installed(self):
        """Trace while inside; every wrapped method restored after."""
        from services.embedder import tokenizing
        from services.embedder.cache import EmbeddingCache
        from services.embedder.encoder import Launched
        from services.embedder.hot_vectors import HotVectors
        from services.embedder.inflight import InFlight
        from services.embedder.landing import Lander
        from services.embedder.service import EmbedderService, EmbedJob
        from services.embedder.servicer import EmbedderServicer

        wrapped = [
            self._wrap(EmbedderServicer, "_begin", "begin request"),
            self._wrap(EmbedderServicer, "_chunks", "encode response"),
            self._wrap(tokenizing.ParallelTokenizer, "_encode", "tokenise chunk"),
            self._wrap(EmbedderService, "_launch", "launch batch", _batch_tokens),
            self._wrap(EmbedderService, "_landed", "deliver batch"),
            self._wrap(EmbedderService, "_compute", "compute request (queue, wait)"),
            self._wrap(EmbedJob, "finish", "finish request"),
            self._wrap(EmbeddingCache, "put_many", "cache write"),
            # What a request's begin is made of (its texts looked for in memory, its whole
            # answer and its texts in the cache's file, its misses claimed), and the kept
            # vectors' put after its compute.
            self._wrap(EmbedderService, "_from_memory", "memory lookup"),
            self._wrap(EmbeddingCache, "read_batch", "whole-answer read"),
            self._wrap(EmbeddingCache, "get_matrix", "cache reads"),
            self._wrap(InFlight, "claim", "claim texts"),
            self._wrap(HotVectors, "put", "keep hot vectors"),
            self._wrap(HotVectors, "_put_and_release", "keep hot vectors behind"),
            self._wrap(Lander, "put", "hand to lander"),
            # The lander's wait for a batch's vectors (a CUDA event's synchronize: it spins on
            # a core of its own, outside the GIL, for as long as this lasts).
            self._wrap(Launched, "result", "wait for device"),
        ]
        gc.callbacks.append(self._gc)
        self.start = time.perf_counter()
        try:
            yield self
        finally:
            gc.callbacks.remove(self._gc)
            for owner, name, original in wrapped:
                setattr(owner, name, original)

    def summary(
        self,
        wall: float,
        head_s: float = 0.4,
        tail_s: float = 0.6,
        windows: list[tuple[float, float]] = (),
    ) -> str:
        """Totals per kind, then every event that began in the first `head_s` or ended in the
        last `tail_s` seconds of a pass of `wall` seconds, or overlaps one of `windows` (s from
        the start: a GPU trace's gaps), in ms from its start."""
        events = sorted(self.events, key=lambda e: e[1])
        totals: dict[str, list[float]] = defaultdict(list)
        for what, start, end, _ in events:
            totals[what.split(" [")[0]].append(end - start)
        lines = [
            "host totals: "
            + "; ".join(
                f"{what} x{len(d)} {sum(d) * 1e3:.0f} ms (max {max(d) * 1e3:.0f})"
                for what, d in sorted(totals.items())
            )
        ]
        ms = lambda t: (t - self.start) * 1e3  # noqa: E731
        shown = [
            e
            for e in events
            if e[1] - self.start < head_s
            or e[2] - self.start > wall - tail_s
            or "gc" in e[0]
            or any(a <= e[2] - self.start and e[1] - self.start <= b for a, b in windows)
        ]
        for what, start, end, thread in shown[:220]:
            lines.append(f"  {ms(start):8.1f} -{ms(end):8.1f} ms  {what:30s} {thread}")
        return "\n".join(lines)


def _batch_tokens(args: tuple) -> str:
    """`EmbedderService._launch(encoder, queue, rows)`'s batch: its rows and tokens."""
    rows = args[-1]
    return f"[{len(rows)} rows, {sum(len(row.ids) for row in rows)} tokens]"
