"""What every call on every server goes through: its request id and log context, the caps on
open streams and unary calls, the idle timeout of client streams, the one mapping of domain errors
to status (the table is `tunewire.errors`), and its metrics and trace span.

`CallInterceptor` is a grpc.aio interceptor that wraps each handler's behaviour, keeping its kind:

- `async def` handlers and async generators run on the server's event loop. The long-lived
  streams (Health.Watch, WatchJob, WatchUpload, uploads, StreamEmbed) are written so: while they
  wait they hold no thread, so however many are open, nothing else waits behind them.
- Plain functions and generators run in the server's thread pool (grpc.aio's migration pool):
  the short unary work, which may block on disk, LMDB or the GPU. They see the context variables
  the call had when admitted (log context, principal) and a `SyncContext`, which also answers
  `is_active()` and `abort_with_status()` as the threaded server's context did.

Caps count open calls on the event loop when a call is admitted, and free the slot when the
call's task ends, however it ends (answered, failed, cancelled, or cancelled while still queued
for a thread), so a slot cannot leak. Beyond a cap the new call, and only it, is refused with
RESOURCE_EXHAUSTED before it reads anything.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import inspect
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
import structlog

from tunewire import metrics, tracing
from tunewire.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    TunewireError,
    to_status,
)

log = structlog.get_logger("tunewire.calls")

HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"

# Streams one principal may hold open on one server (WatchJob, uploads, StreamEmbed...).
DEFAULT_MAX_STREAMS_PER_PRINCIPAL = 256
# Health.Watch needs no token, so it has one cap for the whole server.
DEFAULT_MAX_HEALTH_WATCHES = 4096
# A client stream that sends nothing for this long (while the server owes it nothing) is closed.
DEFAULT_STREAM_IDLE_TIMEOUT_S = 60.0
# Unary calls admitted at once (running, or queued for a thread with their request in memory).
DEFAULT_MAX_CONCURRENT_RPCS = 128

# Status details travel in trailing metadata, which clients cap (8 KiB by default); a message
# echoing a huge client-sent value would turn into RESOURCE_EXHAUSTED on the client.
MAX_ERROR_MESSAGE_CHARS = 1024


@dataclass(frozen=True)
class CallLimits:
    """The caps of one server; None turns one off."""

    max_streams_per_principal: int | None = DEFAULT_MAX_STREAMS_PER_PRINCIPAL
    max_health_watches: int | None = DEFAULT_MAX_HEALTH_WATCHES
    max_unary_calls: int | None = DEFAULT_MAX_CONCURRENT_RPCS
    stream_idle_timeout_s: float | None = DEFAULT_STREAM_IDLE_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("max_streams_per_principal", "max_health_watches", "max_unary_calls"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None for no cap), got {value}")
        if self.stream_idle_timeout_s is not None and self.stream_idle_timeout_s <= 0:
            raise ValueError(
                f"stream_idle_timeout_s must be > 0 (or None), got {self.stream_idle_timeout_s}"
            )


class OpenCalls:
    """Open calls by key. Touched only on the server's event loop, so it needs no lock; the
    health-only port shares the main server's instance (and loop), hence one Health.Watch cap."""

    def __init__(self) -> None:
        self._open: Counter[tuple[str, str]] = Counter()

    def try_open(self, key: tuple[str, str], cap: int | None) -> bool:
        if cap is not None and self._open[key] >= cap:
            return False
        self._open[key] += 1
        return True

    def close(self, key: tuple[str, str]) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def count(self, key: tuple[str, str]) -> int:
        return self._open[key]


def principal_key(principal: Any) -> str:
    """The name caps count a caller by: the principal's name when it has one, else its token's
    id; callers of a server without tokens are all one principal."""
    if principal is None:
        return "anonymous"
    return getattr(principal, "name", "") or principal.token_id


class SyncContext:
    """The context a thread-pool handler gets: grpc.aio's, plus `is_active()` (false once the
    call has ended or the client went away) and `abort_with_status()`, which the handlers
    written for the threaded server use."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self._done = threading.Event()
        self.aborted = False
        context.add_callback(self._done.set)

    def is_active(self) -> bool:
        return not self._done.is_set()

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        self.aborted = True
        self._context.abort(code, details, trailing_metadata)

    def abort_with_status(self, status: grpc.Status) -> None:
        self.abort(status.code, status.details, status.trailing_metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class IdleRequests:
    """A client stream's requests, failing with DEADLINE_EXCEEDED (`STREAM_IDLE`) when the
    client sends nothing for `timeout_s`. The clock runs only while the server waits for the
    next message and owes the client nothing: a handler that is still working on earlier
    requests sets `busy` (a callable), and the wait then goes on however long it takes.

    The read is begun at once, in the caller's own step, under a deadline that is pushed back
    while `busy()`: a read begun in a task of its own starts a loop step later, after the
    handler's next answer has begun to go out, and grpc.aio then finished it only once that
    answer was sent (every read of a stream waited for the write before it: a 2 MiB answer a
    request, read and answered in turn instead of at once)."""

    def __init__(self, requests: AsyncIterator[Any], timeout_s: float | None) -> None:
        self._requests = requests.__aiter__()
        self.timeout_s = timeout_s
        self.busy: Callable[[], bool] = lambda: False

    def __aiter__(self) -> IdleRequests:
        return self

    async def __anext__(self) -> Any:
        return _parsed(await self._next())

    async def _next(self) -> Any:
        if self.timeout_s is None:
            return await self._requests.__anext__()
        loop = asyncio.get_running_loop()
        deadline = asyncio.timeout(None)
        timer: asyncio.TimerHandle | None = None

        def due() -> None:
            nonlocal timer
            if self.busy():
                timer = loop.call_later(self.timeout_s, due)
            else:
                deadline.reschedule(loop.time())  # expires now: the read is cancelled

        try:
            async with deadline:
                timer = loop.call_later(self.timeout_s, due)
                return await self._requests.__anext__()
        except TimeoutError:
            if not deadline.expired():  # the read's own error, not the idle timeout
                raise
            raise DeadlineExceeded(
                f"the client sent nothing for {self.timeout_s:g} s; the stream was "
                "closed (send the next message sooner, or open a new stream)",
                reason="STREAM_IDLE",
            ) from None
        finally:
            if timer is not None:
                timer.cancel()


def _bound_message(err: TunewireError) -> None:
    if len(err.message) > MAX_ERROR_MESSAGE_CHARS:
        err.message = err.message[:MAX_ERROR_MESSAGE_CHARS] + "… (truncated)"
    if err.field and len(err.field) > 256:
        err.field = err.field[:256]


def _disk_full(exc: BaseException) -> ResourceExhausted | None:
    """A full disk or quota is the server's resource running out, not an internal bug."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(
            "the server's disk is full; free space or raise its quota, then retry",
            reason="DISK_FULL",
        )
    return None


def failure_status(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple]:
    """(code, details, trailing metadata) for an exception a handler raised; logs it."""
    exc = _disk_full(exc) or exc
    if isinstance(exc, TunewireError):
        _bound_message(exc)
        log.info(
            "request failed",
            code=exc.code.name,
            reason=exc.reason,
            field=exc.field,
            error=exc.message,
        )
        status = to_status(exc)
        return status.code, status.details, status.trailing_metadata
    log.error("unhandled error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error (see the server log)", ()


class _Call:
    """One call's bookkeeping: its metrics and trace span, ended once with its status."""

    __slots__ = ("method", "request_id", "start", "span", "ended")

    def __init__(self, method: str, request_id: str) -> None:
        self.method = method
        self.request_id = request_id
        self.start = time.perf_counter()
        self.span = (
            tracing.start_rpc_span(
                method, request_id, structlog.contextvars.get_contextvars().get("principal", "")
            )
            if tracing.enabled()
            else None
        )
        self.ended = False

    def end(self, code: grpc.StatusCode | None) -> None:
        if self.ended:
            return
        self.ended = True
        code = code or grpc.StatusCode.OK
        metrics.observe_rpc(self.method, code.name, time.perf_counter() - self.start)
        if self.span is not None:
            tracing.end_rpc_span(self.span, code.name)


def _code_of(context: Any) -> grpc.StatusCode | None:
    try:
        return context.code()
    except Exception:  # noqa: BLE001 - the sync context has no code(); the call then aborted
        return None


def refusing(
    handler: grpc.RpcMethodHandler,
    err: TunewireError,
    on_refuse: Callable[[Any], None] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s shape that aborts with `err` before reading any input;
    `on_refuse(context)` runs first (to log the peer, say)."""
    code, details, trailing = _refusal(err)

    async def unary(_request, context):
        if on_refuse is not None:
            on_refuse(context)
        await context.abort(code, details, trailing)

    async def streaming(_request, context):
        if on_refuse is not None:
            on_refuse(context)
        await context.abort(code, details, trailing)
        yield  # never reached: makes this an async generator, as streaming handlers are

    behaviour = streaming if handler.response_streaming else unary
    return _replace(handler, behaviour)


def _refusal(err: TunewireError) -> tuple[grpc.StatusCode, str, tuple]:
    status = to_status(err)
    return status.code, status.details, status.trailing_metadata


def _behaviour(handler: grpc.RpcMethodHandler) -> Callable:
    if handler.request_streaming:
        return handler.stream_stream if handler.response_streaming else handler.stream_unary
    return handler.unary_stream if handler.response_streaming else handler.unary_unary


def _replace(
    handler: grpc.RpcMethodHandler, behaviour: Callable, lenient: bool = False
) -> grpc.RpcMethodHandler:
    """`handler` with `behaviour`; `lenient`: a request that does not parse reaches it as an
    `Undecodable` (which `_parsed` and IdleRequests turn into INVALID_ARGUMENT)."""
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    parse = handler.request_deserializer
    if lenient and parse is not None:
        parse = _lenient(parse)
    return make(behaviour, parse, handler.response_serializer)


class Undecodable:
    """A request message that did not parse (a string field holding bytes that are not UTF-8,
    a truncated message). grpc.aio answered it UNKNOWN, "Unexpected <class DecodeError>"."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"the request message does not parse: {self.exc}", field="request")


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def lenient(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError, or worse bytes
            return Undecodable(exc)

    return lenient


def _parsed(request: Any) -> Any:
    """A unary call's request, or the INVALID_ARGUMENT it did not parse into."""
    if isinstance(request, Undecodable):
        raise request.error()
    return request


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Admits, wraps and accounts every call (see the module docstring). `principal` returns
    the caller the auth interceptor before this one found (None when refused or no auth)."""

    def __init__(
        self,
        limits: CallLimits,
        open_calls: OpenCalls,
        *,
        auth: bool,
        principal: Callable[[], Any],
        public_methods: frozenset[str] = frozenset({HEALTH_CHECK, HEALTH_WATCH}),
    ) -> None:
        self.limits = limits
        self.open = open_calls
        self.auth = auth
        self.principal = principal
        self.public = public_methods

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata or ()
        request_id = _request_id(metadata) or uuid.uuid4().hex[:12]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, method=method)
        caller = self.principal()
        if caller is not None:  # who the call runs as (a service acting for it: `via`)
            structlog.contextvars.bind_contextvars(principal=caller.name)
            if getattr(caller, "via", ""):
                structlog.contextvars.bind_contextvars(via=caller.via)
        refused = self._admit(method, handler)
        if refused is not None:
            metrics.count_refused(method, refused.reason)
            log.warning("call refused", code=refused.code.name, reason=refused.reason)
            handler = refusing(handler, refused)
        return self._wrap(handler, method, request_id)

    def _admit(self, method: str, handler: grpc.RpcMethodHandler) -> TunewireError | None:
        """Take a slot for this call (freed when its task ends), or the error refusing it."""
        principal = self.principal()
        if self.auth and principal is None and method not in self.public:
            return None  # the auth interceptor refused it: it ends at once, holding nothing
        streaming = handler.request_streaming or handler.response_streaming
        if method == HEALTH_CHECK:
            return None  # answered on the loop at once: a probe is never refused for load
        if method == HEALTH_WATCH:
            key, cap = ("health-watch", ""), self.limits.max_health_watches
            what = f"{cap} Health.Watch streams are open on this server"
        elif streaming:
            key, cap = ("streams", principal_key(principal)), self.limits.max_streams_per_principal
            what = f"this caller has {cap} streams open on this server"
        else:
            key, cap = ("unary", ""), self.limits.max_unary_calls
            what = f"{cap} calls are in progress on this server"
        if not self.open.try_open(key, cap):
            return ResourceExhausted(f"{what}; close one or retry later", reason="TOO_MANY_CALLS")
        if streaming:
            metrics.stream_opened(method)
        open_calls = self.open

        def release(_task) -> None:
            open_calls.close(key)
            if streaming:
                metrics.stream_closed(method)

        asyncio.current_task().add_done_callback(release)
        return None

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str, request_id: str):
        fn = _behaviour(handler)
        is_async = asyncio.iscoroutinefunction(fn) or _is_async_gen(fn)
        idle = self.limits.stream_idle_timeout_s if handler.request_streaming else None
        if is_async:
            # A streaming handler may also be a coroutine that writes with `context.write`
            # (grpc's aio Health.Watch): wrapped like a unary one, its None is not sent.
            stream = bool(handler.request_streaming)
            wrapped = (
                _async_stream(fn, method, request_id, stream, idle)
                if _is_async_gen(fn)
                else _async_unary(fn, method, request_id, stream, idle)
            )
        else:
            if handler.request_streaming:
                log.warning(
                    "a client stream runs in the thread pool: no idle timeout", method=method
                )
            # The call's context variables (log context, principal), for the pool thread.
            ctx = contextvars.copy_context()
            wrapped = (
                _sync_stream(fn, method, request_id, ctx)
                if handler.response_streaming
                else _sync_unary(fn, method, request_id, ctx)
            )
        return _replace(handler, wrapped, lenient=True)


def _is_async_gen(fn: Callable) -> bool:
    return inspect.isasyncgenfunction(fn)


def _request_id(metadata) -> str | None:
    for key, value in metadata:
        if key == "x-request-id":
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


def _async_unary(fn, method: str, request_id: str, stream: bool, idle: float | None):
    async def inner(request, context):
        call = _Call(method, request_id)
        if stream:  # its messages checked as they come (and timed, unless idle is None)
            request = IdleRequests(request, idle)
        try:
            response = await fn(_parsed(request), context)
        except asyncio.CancelledError:
            call.end(grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status here, once
            await _fail_async(exc, context, call)
        call.end(_code_of(context))
        return response

    return inner


def _async_stream(fn, method: str, request_id: str, stream: bool, idle: float | None):
    async def inner(request, context):
        call = _Call(method, request_id)
        if stream:  # its messages checked as they come (and timed, unless idle is None)
            request = IdleRequests(request, idle)
        try:
            async for response in fn(_parsed(request), context):
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            call.end(grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:  # noqa: BLE001
            await _fail_async(exc, context, call)
        call.end(_code_of(context))

    return inner


async def _fail_async(exc: Exception, context, call: _Call) -> NoReturn:
    """End `call` for `exc` and raise: an abort already sent passes through, and anything else
    becomes its status (one table, errors.py)."""
    if isinstance(exc, grpc.aio.AbortError):
        call.end(_code_of(context))
        raise exc
    code, details, trailing = failure_status(exc)
    call.end(code)
    await context.abort(code, details, trailing)
    raise AssertionError("unreachable: abort raises")


def _fail_sync(exc: Exception, sync: SyncContext, context, call: _Call, ctx) -> NoReturn:
    """End `call` for `exc` and raise: an abort already sent passes through, a downstream
    RpcError stays what it is, and anything else becomes its status (one table, errors.py)."""
    if sync.aborted or isinstance(exc, grpc.aio.AbortError):
        call.end(_code_of(context) or grpc.StatusCode.UNKNOWN)
        raise exc
    if isinstance(exc, grpc.RpcError):
        call.end(grpc.StatusCode.UNKNOWN)
        raise exc
    code, details, trailing = ctx.run(failure_status, exc)
    call.end(code)
    context.abort(code, details, trailing)
    raise AssertionError("unreachable: abort raises")


def _sync_unary(fn, method: str, request_id: str, ctx: contextvars.Context):
    def inner(request, context):
        sync = SyncContext(context)
        call = ctx.run(_Call, method, request_id)  # in the call's context: its principal
        try:
            response = ctx.run(fn, _parsed(request), sync)
        except Exception as exc:  # noqa: BLE001
            _fail_sync(exc, sync, context, call, ctx)
        call.end(grpc.StatusCode.OK)
        return response

    return inner


def _sync_stream(fn, method: str, request_id: str, ctx: contextvars.Context):
    def inner(request, context):
        sync = SyncContext(context)
        call = ctx.run(_Call, method, request_id)  # in the call's context: its principal
        try:
            responses = ctx.run(fn, _parsed(request), sync)
        except Exception as exc:  # noqa: BLE001
            _fail_sync(exc, sync, context, call, ctx)
        try:
            while True:
                try:
                    response = ctx.run(next, responses)
                except StopIteration:
                    break
                yield response
        except GeneratorExit:
            call.end(grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:  # noqa: BLE001
            _fail_sync(exc, sync, context, call, ctx)
        finally:
            responses.close()
        call.end(grpc.StatusCode.OK)

    return inner
