"""A change counter that worker threads bump and asyncio handlers await.

The stores behind the Watch streams (job records and events, uploads) are written by worker
threads under a lock; the streams that follow them run on a server's event loop and must not hold
a thread while they wait. A store calls `notify()` after each change; a follower reads `version`
before it looks at the store, and awaits `wait(version)`: a change made between the two is never
missed, because the version it waits from is already old.
"""

from __future__ import annotations

import asyncio
import threading


class Changes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = set()

    @property
    def version(self) -> int:
        return self._version

    def notify(self) -> None:
        """Record a change and wake every waiter (from any thread)."""
        with self._lock:
            self._version += 1
            waiters, self._waiters = self._waiters, set()
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:  # that loop has closed: its waiter is gone with it
                pass

    async def wait(self, seen: int, timeout: float | None = None) -> int:
        """Return once the version differs from `seen` (or after `timeout` seconds)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        entry = (loop, future)
        with self._lock:
            if self._version != seen:
                return self._version
            self._waiters.add(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            with self._lock:
                self._waiters.discard(entry)
        return self._version


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
