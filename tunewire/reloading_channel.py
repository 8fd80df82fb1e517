"""A client channel that follows the files it was built from (client certificate, key, CA).

gRPC Python has no client-side certificate reload: a channel's credentials are fixed when it is
made, and a long-lived client (a notebook, a pipeline step, a service calling its peers) would
keep presenting a certificate that has been rotated away, until the server stops accepting it.

`ReloadingChannel` is a `grpc.Channel` that stubs are built on once, as usual. Before each call it
checks its files (one `stat` each, at most once per `min_interval_s`, `tunewire.watch`); when one
changed it builds a new inner channel from the new contents and sends that call and later ones
there. The previous inner channel is closed when its last call ends, so a long WatchJob or
StreamEmbed in flight is not cut by a rotation. A rebuild that raises keeps the current channel
and is tried again (at most once per `min_interval_s`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import structlog

from tunewire.watch import WatchedFile

log = structlog.get_logger("tunewire.reloading_channel")


class _Generation:
    """One inner channel and the calls still running on it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.active = 0
        self.retired = False
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.channel.close()


class ReloadingChannel(grpc.Channel):
    """A channel rebuilt by `build(contents)` whenever one of `files` ({name: path}) changes;
    `contents` maps the same names to the files' bytes."""

    def __init__(
        self,
        build: Callable[[dict[str, bytes]], grpc.Channel],
        files: Mapping[str, Path],
        min_interval_s: float = 1.0,
    ) -> None:
        self._build = build
        self._files = {name: WatchedFile(path, min_interval_s) for name, path in files.items()}
        self._min_interval_s = min_interval_s
        self._lock = threading.Lock()
        # After a failed rebuild, when to try again with the files as they are then.
        self._retry_at: float | None = None
        # Read now: an unreadable file fails at connect time, not on the first call.
        self._current = _Generation(build({n: f.read()[0] for n, f in self._files.items()}))

    def _acquire(self) -> _Generation:
        """The generation a new call runs on (after a rebuild if a file changed), counted as
        active until `_release`."""
        with self._lock:
            # Read every file (not any(...) over a generator): each read consumes its change.
            reads = {name: f.read() for name, f in self._files.items()}
            retry = self._retry_at is not None and time.monotonic() >= self._retry_at
            if retry or any(changed for _, changed in reads.values()):
                self._swap({name: data for name, (data, _) in reads.items()})
            self._current.active += 1
            return self._current

    def _swap(self, contents: dict[str, bytes]) -> None:
        try:
            channel = self._build(contents)
        except Exception as exc:  # noqa: BLE001 - a bad rotation must not stop the client
            log.error(
                "client certificate reload failed; keeping the current channel", error=str(exc)
            )
            self._retry_at = time.monotonic() + self._min_interval_s
            return
        self._retry_at = None
        old, self._current = self._current, _Generation(channel)
        old.retired = True
        log.info("client certificates reloaded", files=sorted(self._files))
        if old.active == 0:
            _close_previous(old)

    def _release(self, generation: _Generation) -> None:
        with self._lock:
            generation.active -= 1
            done = generation.retired and generation.active == 0
        if done:
            # Off this thread: a stream's done callback runs on the channel's own polling thread,
            # and closing the channel from there waits on the call it is finishing.
            threading.Thread(
                target=_close_previous,
                args=(generation,),
                name="close-previous-channel",
                daemon=True,
            ).start()

    # grpc.Channel ------------------------------------------------------------------------------
    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _MultiCallable:
        return _MultiCallable(self, "unary_unary", method, args, kwargs, streams=False)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> _MultiCallable:
        return _MultiCallable(self, "stream_unary", method, args, kwargs, streams=False)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> _MultiCallable:
        return _MultiCallable(self, "unary_stream", method, args, kwargs, streams=True)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> _MultiCallable:
        return _MultiCallable(self, "stream_stream", method, args, kwargs, streams=True)

    def subscribe(self, callback, try_to_connect: bool = False) -> None:
        """Connectivity of the current inner channel (a rebuild starts a new one)."""
        self._current.channel.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback) -> None:
        self._current.channel.unsubscribe(callback)

    def close(self) -> None:
        """Close the current inner channel (its calls end, as with any channel); previous
        ones still close when their last call ends."""
        with self._lock:
            self._current.retired = True
            self._current.close()

    def __enter__(self) -> ReloadingChannel:
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.close()
        return False


def _close_previous(generation: _Generation) -> None:
    if not generation.closed:
        generation.close()
        log.info("previous client channel closed")


class _MultiCallable:
    """What a stub holds for one method: each call picks the channel's current generation and
    releases it when the call ends (blocking calls on return, futures and response streams in
    their done callback)."""

    def __init__(
        self,
        owner: ReloadingChannel,
        kind: str,
        method: str,
        args: tuple,
        kwargs: dict,
        streams: bool,
    ) -> None:
        self._owner, self._kind, self._method = owner, kind, method
        self._args, self._kwargs, self._streams = args, kwargs, streams
        self._cached: tuple[_Generation, Any] | None = None

    def _target(self) -> tuple[_Generation, Any]:
        generation = self._owner._acquire()
        cached = self._cached
        if cached is None or cached[0] is not generation:
            inner = getattr(generation.channel, self._kind)(
                self._method, *self._args, **self._kwargs
            )
            cached = self._cached = (generation, inner)
        return cached

    def _blocking(self, attr: str, *args: Any, **kwargs: Any) -> Any:
        generation, inner = self._target()
        try:
            return getattr(inner, attr)(*args, **kwargs)
        finally:
            self._owner._release(generation)

    def _tracked(self, attr: str, *args: Any, **kwargs: Any) -> Any:
        generation, inner = self._target()
        try:
            call = getattr(inner, attr)(*args, **kwargs)
        except BaseException:
            self._owner._release(generation)
            raise
        call.add_done_callback(lambda _call: self._owner._release(generation))
        return call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._streams:
            return self._tracked("__call__", *args, **kwargs)
        return self._blocking("__call__", *args, **kwargs)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._blocking("with_call", *args, **kwargs)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._tracked("future", *args, **kwargs)
