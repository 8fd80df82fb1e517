"""What one HTTP request may take of the front door: a slot among the requests in flight (and
only so many of them per caller), a body of bounded size, received in bounded time.

uvicorn reads any body a client sends, as slowly as it sends it: a 300 MB body was buffered
whole before the route refused it, and a client that sent its headers and then nothing held its
request (and its slot) forever, so 512 such connections answered everyone else 429. Here a body
declared larger than the limit is refused (413) before a byte of it is read, one that grows past
it while streaming is cut off there, and one not whole within the timeout is 408; each in the
calling API's error shape. A caller is its bearer token (the services authenticate it; a
request without one is the anonymous caller).
"""

from __future__ import annotations

import asyncio
import os

from clients.http.errors import error_shape
from tunewire.errors import InvalidArgument, ResourceExhausted, TunewireError

DEFAULT_MAX_CONCURRENT = 512
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 60.0


def env_limits() -> tuple[int, float]:
    """(max body bytes, body timeout in seconds) from TUNEWIRE_HTTP_MAX_BODY_BYTES and
    TUNEWIRE_HTTP_BODY_TIMEOUT, else the defaults; a value that is not a positive number is
    InvalidArgument naming the variable."""
    return (
        int(_positive("TUNEWIRE_HTTP_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, int)),
        _positive("TUNEWIRE_HTTP_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT_S, float),
    )


def _positive(name: str, default: float, kind: type) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if not value > 0 or value == float("inf"):
        raise InvalidArgument(f"must be a positive {kind.__name__}, not {raw!r}", field=name)
    return value


async def _refuse(scope, receive, send, err: TunewireError, status: int) -> None:
    response = error_shape(scope["path"])(err)
    response.status_code = status
    response.headers["connection"] = "close"  # the rest of the body is not read
    await response(scope, receive, send)


def _caller(scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value
    return b""


class ConcurrencyLimit:
    """ASGI middleware: at most `limit` requests in flight, and at most `per_caller` of them
    from one caller; past either, 429 at once (as TEI answers when overloaded)."""

    def __init__(self, app, limit: int, per_caller: int | None = None) -> None:
        self.app, self.limit, self.active = app, limit, 0
        self.per_caller = limit if per_caller is None else per_caller
        self._callers: dict[bytes, int] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        caller = _caller(scope)
        mine = self._callers.get(caller, 0)
        if self.active >= self.limit or mine >= self.per_caller:
            overloaded = self.active >= self.limit
            err = ResourceExhausted(
                f"the server is overloaded: {self.limit} requests in flight"
                if overloaded
                else f"too many requests in flight: at most {self.per_caller} per caller",
                reason="OVERLOADED" if overloaded else "TOO_MANY_CALLS",
            )
            return await error_shape(scope["path"])(err)(scope, receive, send)
        self.active += 1
        self._callers[caller] = mine + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            left = self._callers[caller] - 1
            if left:
                self._callers[caller] = left
            else:
                del self._callers[caller]


class BodyLimit:
    """ASGI middleware: the request's body read here, at most `max_bytes` within `timeout_s`
    (module docstring), then handed to the app whole."""

    def __init__(self, app, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = InvalidArgument(
            f"the request body is over {self.max_bytes} bytes", field="body"
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _refuse(scope, receive, send, too_large, 413)
        chunks, size, more = [], 0, True
        try:
            async with asyncio.timeout(self.timeout_s):  # no task per read, as wait_for makes
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        break
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            late = InvalidArgument(
                f"the request body did not arrive within {self.timeout_s:g} s", field="body"
            )
            return await _refuse(scope, receive, send, late, 408)
        if size > self.max_bytes:
            return await _refuse(scope, receive, send, too_large, 413)
        body = b"".join(chunks) if len(chunks) != 1 else chunks[0]
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # the disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)
