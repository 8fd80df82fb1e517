"""Concurrent HTTP requests merged into one call to the services (request coalescing).

Each single-row predict or embeddings request costs the front door a gRPC call, and the embedder
a call of its own (parsing, the cache's lookup, a thread hand-off): per-request Python work, one
GIL, that bounded the front door near 200 requests/s while the model idled. Here requests that
may share a call (same caller, same model and settings: `key`) wait on the event loop while up
to `max_in_flight` calls for that key run; each call takes every request queued by then, up to
`max_items` items (rows or texts), and its answer is split back. A request that finds no call
in flight goes at once, so a lone client waits for nothing; under load the calls grow on their
own (continuous batching, no fixed window). The embedder then batches a call's texts by token
budget with every other caller's (services/embedder/batching.py) - the front door does not
batch by tokens a second time.

A merged call that fails with INVALID_ARGUMENT may have failed for one request's input: each
request is then sent alone, so each gets its own answer or error (with its own field path), as
if nothing had been merged. Any other failure (the model is unknown, the caller not allowed,
the embedder away) is every merged request's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from tunewire.errors import InvalidArgument

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")
R = TypeVar("R")

# run(key, parts) → one result per part, in order, or the exception that part alone fails with;
# raises when the call as a whole failed. Runs in a worker thread (it blocks on gRPC).
Run = Callable[[K, list[P]], list["R | Exception"]]


class Coalescer(Generic[K, P, R]):
    """Merges concurrent `submit`s of one key into calls of `run` (module docstring). Lives on
    one event loop: its state is touched only from that loop, so it needs no lock."""

    def __init__(
        self,
        run: Run,
        size: Callable[[P], int],
        max_items: int,
        max_in_flight: int = 2,
        gate: Callable[[K], AbstractAsyncContextManager] | None = None,
    ) -> None:
        """`size(part)`: the items a request brings (rows, texts); a call holds at most
        `max_items` of them, or one request whatever its size. `max_in_flight` calls per key
        run at once, so one call's transfer overlaps another's compute. `gate(key)`: entered
        around each call's thread (the caller's share of the worker threads)."""
        if max_items < 1 or max_in_flight < 1:
            raise ValueError("max_items and max_in_flight must be >= 1")
        self._run, self._size = run, size
        self._gate = gate or (lambda key: contextlib.nullcontext())
        self.max_items, self.max_in_flight = max_items, max_in_flight
        self._queued: dict[K, list[tuple[P, asyncio.Future]]] = {}
        self._in_flight: dict[K, int] = {}
        self._tasks: set[asyncio.Task] = set()  # running calls, kept from the collector
        self.calls = 0  # calls made, for tests and logs
        self.merged = 0  # requests answered by a call that held more than one

    async def submit(self, key: K, part: P) -> R:
        """The answer to one request, from a call it may share with others."""
        future = asyncio.get_running_loop().create_future()
        self._queued.setdefault(key, []).append((part, future))
        self._start(key)
        return await future

    def _start(self, key: K) -> None:
        queued = self._queued.get(key)
        while queued and self._in_flight.get(key, 0) < self.max_in_flight:
            taken, items = 0, 0
            for part, _ in queued:
                size = self._size(part)
                if taken and items + size > self.max_items:
                    break
                taken, items = taken + 1, items + size
            batch, queued[:] = queued[:taken], queued[taken:]
            batch = [(p, f) for p, f in batch if not f.done()]  # its client went away
            if not batch:
                continue
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            task = asyncio.ensure_future(self._call(key, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not queued:
            self._queued.pop(key, None)

    async def _in_thread(self, key: K, parts: list[P]) -> list:
        async with self._gate(key):
            return await run_in_threadpool(self._run, key, parts)

    async def _call(self, key: K, batch: list[tuple[P, asyncio.Future]]) -> None:
        released = False

        def release() -> None:
            """The call's slot back, and the next call (what queued meanwhile) started."""
            nonlocal released
            if released:
                return
            released = True
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]
            self._start(key)

        try:
            parts = [part for part, _ in batch]
            self.calls += 1
            try:
                results = await self._in_thread(key, parts)
            except InvalidArgument:
                if len(batch) == 1:
                    raise
                # Maybe one request's input: each alone, each with its own answer or error.
                alone = [self._in_thread(key, [part]) for part in parts]
                results = [
                    r if isinstance(r, BaseException) else r[0]
                    for r in await asyncio.gather(*alone, return_exceptions=True)
                ]
            else:
                self.merged += len(batch) if len(batch) > 1 else 0
            # The next call leaves before these answers are written: their requests resume
            # after it on the loop, and its texts are on their way meanwhile.
            release()
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        except BaseException as exc:  # noqa: BLE001 - every merged request's failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            release()
