"""Client-streaming handlers written as plain loops, served without tying up a thread while the
client is silent.

`@client_stream` turns `def Method(self, request_iterator, context)` (a synchronous consumer:
parse, write to disk, hash) into an `async def` handler for grpc.aio. The requests are read on the
event loop (with the server's idle timeout, `tunewire.calls.IdleRequests`) and handed to the
consumer, which runs in a thread of its own from the first message on, through a small bounded
feed: a slow disk slows the reading and so the client (backpressure), and a stream that never
sends its first message holds no thread at all. When the stream fails (idle timeout, cancel) the
consumer's next read raises `StreamClosed`, so it cleans up (temporary files) and ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from tunewire.errors import TunewireError

# Threads for consumers of open client streams: one per stream that has sent a message. Not a
# limit (the per-principal stream caps are); only the most threads alive at once.
_CONSUMERS = futures.ThreadPoolExecutor(max_workers=4096, thread_name_prefix="client-stream")
_FEED_DEPTH = 4


class StreamClosed(Exception):
    """The client stream ended abnormally under the consumer (it is cleaning up)."""


class _Feed:
    """Messages from the event loop to one consumer thread, at most `depth` waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop, depth: int = _FEED_DEPTH) -> None:
        self._loop = loop
        self._depth = depth
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._space = asyncio.Event()
        self._closed = False
        self._failed: BaseException | None = None
        self.consumer_done = False

    async def put(self, item: Any) -> None:
        while True:
            with self._cond:
                if self.consumer_done:
                    return  # it stopped reading (answered or failed): drop the rest
                if len(self._items) < self._depth:
                    self._items.append(item)
                    self._cond.notify()
                    return
                self._space.clear()
            await self._space.wait()

    def close(self, failure: BaseException | None = None) -> None:
        with self._cond:
            self._closed = True
            self._failed = failure
            self._cond.notify_all()

    def finished(self) -> None:
        """The consumer has returned: wake a `put` waiting for room."""
        with self._cond:
            self.consumer_done = True
        self._loop.call_soon_threadsafe(self._space.set)

    def __iter__(self) -> Iterator[Any]:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if self._items:
                    item = self._items.popleft()
                elif self._failed is not None:
                    raise StreamClosed(str(self._failed) or type(self._failed).__name__)
                else:
                    return
            self._loop.call_soon_threadsafe(self._space.set)
            yield item


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


class ThreadContext:
    """What a consumer thread may ask of its call: whether it is still on, its metadata and
    peer, and `abort` (ends the call with that status)."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._done = threading.Event()
        context.add_done_callback(lambda _ctx: self._done.set())

    def is_active(self) -> bool:
        return not self._done.is_set()

    def invocation_metadata(self):
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        raise _Abort(code, details, trailing_metadata)

    def abort_with_status(self, status: grpc.Status) -> None:
        raise _Abort(status.code, status.details, status.trailing_metadata)


def client_stream(fn: Callable[[Any, Iterator[Any], Any], Any]):
    """Serve the synchronous client-streaming method `fn` as an async handler (module doc)."""

    @functools.wraps(fn)
    async def handler(self, request_iterator, context):
        loop = asyncio.get_running_loop()
        feed = _Feed(loop)
        call_vars = contextvars.copy_context()  # log context, principal: for the thread
        thread_context = ThreadContext(context)
        consumer: asyncio.Future | None = None

        def consume():
            try:
                return call_vars.run(fn, self, iter(feed), thread_context)
            finally:
                feed.finished()

        def start() -> asyncio.Future:
            return loop.run_in_executor(_CONSUMERS, consume)

        try:
            async for message in request_iterator:
                if consumer is None:
                    consumer = start()
                await feed.put(message)
                if consumer.done():
                    break
        except BaseException as exc:
            feed.close(exc)
            if consumer is not None:
                # Let it clean up; its own error is the stream's failure, already known.
                await asyncio.wait([consumer])
                if not consumer.cancelled():
                    consumer.exception()
            raise
        feed.close()
        if consumer is None:
            consumer = start()
        try:
            return await consumer
        except _Abort as abort:
            await context.abort(abort.code, abort.details, abort.trailing_metadata)
        except StreamClosed as exc:  # the stream failed after all; say so plainly
            raise TunewireError(str(exc)) from None

    return handler
