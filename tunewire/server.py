"""One server bootstrap for all three services.

`create_server()` builds a grpc.aio server running on its own event-loop thread, with the
message-size limits, keepalive and connection-age options every service uses, the shared
interceptors (auth, then `tunewire.calls`: request context, caps on open streams and unary calls,
idle timeout of client streams, the one mapping of domain errors to status, metrics and traces),
the standard health service (each service NOT_SERVING until its owner marks it ready) and server
reflection. It returns a `RunningServer` whose `port` tests bind as 0.

Why asyncio: a threaded server gives every open call a thread, so a few long streams (WatchJob,
Health.Watch, a stalled upload) starve every other call, health checks included. Here streaming
handlers are `async` and hold no thread while they wait; synchronous unary handlers run in a
thread pool (grpc.aio's migration pool); concurrency is bounded by explicit caps
(`tunewire.calls.CallLimits`), not by threads.

`ServerSecurity` adds what a server exposed beyond loopback needs: bearer-token auth
(`tunewire.auth`, health stays open), TLS or mutual TLS with reloaded certificates
(`tunewire.tls`), reflection off, and the caps. Its `health_port` adds a second, plaintext port
serving grpc.health.v1 only, because the kubelet's native gRPC probes cannot speak TLS.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from tunewire.auth import AuthInterceptor, TokenFile, admitted_principal
from tunewire.calls import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    DEFAULT_MAX_HEALTH_WATCHES,
    DEFAULT_MAX_STREAMS_PER_PRINCIPAL,
    DEFAULT_STREAM_IDLE_TIMEOUT_S,
    MAX_ERROR_MESSAGE_CHARS,
    CallInterceptor,
    CallLimits,
    OpenCalls,
)
from tunewire.channel_limits import MAX_MESSAGE_BYTES, STREAM_CHUNK_BYTES, channel_options
from tunewire.tls import ServerTLS

log = structlog.get_logger("tunewire.server")

__all__ = [
    "DEFAULT_MAX_CONCURRENT_RPCS",
    "MAX_ERROR_MESSAGE_CHARS",
    "MAX_MESSAGE_BYTES",
    "STREAM_CHUNK_BYTES",
    "channel_options",
    "RunningServer",
    "ServerSecurity",
    "ServerSettings",
    "Service",
    "create_server",
    "termination_requested",
    "wait_for_termination",
]


@dataclass
class ServerSecurity:
    """Auth, TLS, reflection and the caps; the defaults are the plain loopback server (no
    token, no TLS, reflection on, the default caps)."""

    # `TOKEN ROLE NAME [HUB_NAMESPACES]` lines (tunewire.auth); None: no authentication.
    auth_tokens_file: Path | None = None
    tls: ServerTLS | None = None
    reflection: bool = True
    # Unary calls in progress (running or queued for a thread) before new ones get
    # RESOURCE_EXHAUSTED; None: unlimited. Streams are not counted here (below).
    max_concurrent_rpcs: int | None = DEFAULT_MAX_CONCURRENT_RPCS
    # A plaintext port answering grpc.health.v1 only (the kubelet's probes); None: none, 0: any.
    health_port: int | None = None
    # Open streams per principal (all callers of a server without tokens are one principal).
    max_streams_per_principal: int | None = DEFAULT_MAX_STREAMS_PER_PRINCIPAL
    # Open Health.Watch streams on the server (they need no token, so one cap for all).
    max_health_watches: int | None = DEFAULT_MAX_HEALTH_WATCHES
    # A client stream silent this long while the server owes it nothing is DEADLINE_EXCEEDED.
    stream_idle_timeout_s: float | None = DEFAULT_STREAM_IDLE_TIMEOUT_S

    def limits(self) -> CallLimits:
        return CallLimits(
            max_streams_per_principal=self.max_streams_per_principal,
            max_health_watches=self.max_health_watches,
            max_unary_calls=self.max_concurrent_rpcs,
            stream_idle_timeout_s=self.stream_idle_timeout_s,
        )


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 0
    # Threads for synchronous handlers (short unary work); streams do not hold them.
    max_workers: int = 32
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # Servers close connections after this long so clients re-resolve DNS (headless Services).
    max_connection_age_s: float = 300.0
    max_connection_age_grace_s: float = 30.0
    security: ServerSecurity = field(default_factory=ServerSecurity)
    extra_interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)


@dataclass
class Service:
    """A servicer and how to register it: `add` is the generated `add_XServicer_to_server`."""

    name: str  # full service name, e.g. "tunewire.v1.EmbedderService"
    servicer: Any
    add: Callable[[Any, grpc.aio.Server], None]


class _LoopThread:
    """An asyncio event loop on its own daemon thread; the server lives on it, and blocking
    callers (app start-up, tests, SIGTERM) reach it with `run`."""

    def __init__(self, name: str, io_workers: int) -> None:
        self.loop = asyncio.new_event_loop()
        # Blocking work of async handlers (disk, LMDB, job records: `asyncio.to_thread`).
        self.io_pool = futures.ThreadPoolExecutor(io_workers, thread_name_prefix=f"{name}-io")
        self.loop.set_default_executor(self.io_pool)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine) -> futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        """Stop the loop (from any thread but its own) once its work is done."""

        async def finish() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(finish(), timeout=5)
        except Exception:  # noqa: BLE001 - shutting down regardless
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.io_pool.shutdown(wait=False, cancel_futures=True)


# How long a stopping server waits for handlers still in its pool before closing its loop.
POOL_DRAIN_S = 10.0
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class RunningServer:
    """A started server with its health servicer; `set_ready` flips a service to SERVING.
    `health_server`/`health_port`: the plaintext health-only server, when there is one."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        health_servicer: HealthServicer,
        names: list[str],
        loop: _LoopThread,
        pool: futures.ThreadPoolExecutor,
        open_calls: OpenCalls,
        health_server: grpc.aio.Server | None = None,
        health_port: int | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.health = health_servicer
        self.names = names
        self.health_server = health_server
        self.health_port = health_port
        self._loop = loop
        self._pool = pool
        self._open_calls = open_calls
        self._status = {name: _NOT_SERVING for name in names}
        self._stopped: threading.Event | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop.loop

    def open_streams(self, principal: str | None = None) -> int:
        """Streams open now: a principal's (its `principal_key`), or Health.Watch streams."""

        async def count() -> int:
            if principal is None:
                return self._open_calls.count(("health-watch", ""))
            return self._open_calls.count(("streams", principal))

        return self._loop.run(count(), timeout=10)

    def set_ready(self, name: str, ready: bool = True) -> None:
        """Report `name` SERVING (or NOT_SERVING); "" (the whole server) follows all of them."""
        with self._lock:
            self._status[name] = _SERVING if ready else _NOT_SERVING
            overall = _SERVING if all(s == _SERVING for s in self._status.values()) else None
            updates = [(name, self._status[name]), ("", overall or _NOT_SERVING)]

        async def apply() -> None:
            for service, status in updates:
                await self.health.set(service, status)

        self._loop.run(apply(), timeout=10)

    def stop(self, grace: float | None = 10.0) -> threading.Event:
        """Stop accepting calls, let in-flight ones finish within `grace` seconds. The health
        port keeps answering (NOT_SERVING) until the main server has stopped, so the probes see
        the drain rather than a refused connection; the event is set once both are down."""
        with self._lock:
            if self._stopped is not None:
                return self._stopped
            self._stopped = done = threading.Event()

        async def drain() -> None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)
            if self.health_server is not None:
                await self.health_server.stop(None)

        def finish(_future) -> None:
            # Off the loop: closing the loop waits for it. A handler still running in the pool
            # writes its streamed responses through the loop: the loop keeps running until the
            # pool is idle (bounded), or such a handler would wait for good on a stopped loop,
            # and the interpreter's exit, which joins pool threads, with it.
            def close() -> None:
                idle = threading.Thread(
                    target=self._pool.shutdown,
                    kwargs={"wait": True, "cancel_futures": True},
                    name="server-pool-drain",
                    daemon=True,
                )
                idle.start()
                idle.join(POOL_DRAIN_S)
                self._loop.close()
                _release_at_exit(self._pool)
                done.set()

            threading.Thread(target=close, name="server-close", daemon=True).start()

        self._loop.submit(drain()).add_done_callback(finish)
        return done


def _release_at_exit(pool: futures.ThreadPoolExecutor) -> None:
    """Let the interpreter exit past a stopped server's handlers that never returned (it joins
    every pool thread at exit): nothing is left to answer them, and a process must not hang on
    them. concurrent.futures keeps no public way to say so; without its registry, nothing."""
    registry = getattr(futures.thread, "_threads_queues", None)
    for thread in list(getattr(pool, "_threads", ())):
        if registry is not None and thread.is_alive():
            registry.pop(thread, None)


def _server_options(settings: ServerSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
        ("grpc.so_reuseport", 0),
    ]


async def _health_only_server(
    health_servicer: HealthServicer, host: str, port: int, calls: CallInterceptor
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with nothing but grpc.health.v1, sharing `health_servicer` (and the
    Health.Watch cap) with the main server so both report the same status. No reflection, no
    auth (health is open on the main port too), no service: a plaintext caller learns only what
    a probe learns. Its handlers are async: a probe never waits behind Watch streams."""
    server = grpc.aio.server(interceptors=[calls], options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the health port {host}:{port}")
    await server.start()
    return server, bound


def create_server(
    services: Iterable[Service], settings: ServerSettings | None = None
) -> RunningServer:
    """Build, bind and start a server on its own event-loop thread; returns it with the bound
    port. Its services report NOT_SERVING until `set_ready`."""
    settings = settings or ServerSettings()
    services = list(services)
    names = [svc.name for svc in services]
    loop = _LoopThread(f"grpc-{settings.port or 'any'}", io_workers=16)
    pool = futures.ThreadPoolExecutor(settings.max_workers, thread_name_prefix="grpc")
    try:
        server, port, health_servicer, open_calls, health_server, health_port = loop.run(
            _start(services, settings, pool), timeout=60
        )
    except BaseException:
        loop.close()
        pool.shutdown(wait=False)
        raise
    security = settings.security
    log.info(
        "server started",
        services=names,
        address=f"{settings.host}:{port}",
        tls="mutual" if security.tls and security.tls.client_ca else bool(security.tls),
        auth=security.auth_tokens_file is not None,
        reflection=security.reflection,
        max_concurrent_rpcs=security.max_concurrent_rpcs,
        max_streams_per_principal=security.max_streams_per_principal,
        max_health_watches=security.max_health_watches,
        stream_idle_timeout_s=security.stream_idle_timeout_s,
        health_port=health_port,
    )
    return RunningServer(
        server, port, health_servicer, names, loop, pool, open_calls, health_server, health_port
    )


async def _start(services: list[Service], settings: ServerSettings, pool):
    security = settings.security
    auth = security.auth_tokens_file is not None
    # Auth runs first: a refused call reaches nothing else (and holds no slot).
    interceptors: list[grpc.aio.ServerInterceptor] = (
        [AuthInterceptor(TokenFile(security.auth_tokens_file))] if auth else []
    )
    calls = CallInterceptor(security.limits(), OpenCalls(), auth=auth, principal=admitted_principal)
    server = grpc.aio.server(
        migration_thread_pool=pool,
        interceptors=[*interceptors, *settings.extra_interceptors, calls],
        options=_server_options(settings),
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for svc in services:
        svc.add(svc.servicer, server)
        await health_servicer.set(svc.name, _NOT_SERVING)
    await health_servicer.set("", _NOT_SERVING)
    if security.reflection:
        reflection.enable_server_reflection(
            [
                *(svc.name for svc in services),
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
    address = f"{settings.host}:{settings.port}"
    if security.tls is not None:
        port = server.add_secure_port(address, security.tls.credentials())
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {settings.host}:{settings.port}")
    health_server, health_port = None, None
    if security.health_port is not None:
        # The health port's own interceptor shares the main server's open-call counts, so
        # Health.Watch has one cap across both ports.
        health_calls = CallInterceptor(
            CallLimits(
                max_streams_per_principal=None,
                max_health_watches=security.max_health_watches,
                max_unary_calls=None,
                stream_idle_timeout_s=None,
            ),
            calls.open,
            auth=False,
            principal=admitted_principal,
        )
        health_server, health_port = await _health_only_server(
            health_servicer, settings.host, security.health_port, health_calls
        )
    await server.start()
    return server, port, health_servicer, calls.open, health_server, health_port


def termination_requested() -> threading.Event:
    """An event set by SIGTERM/SIGINT from now on: a process installs it before it starts its
    servers, so a signal that comes while they start (health may already say SERVING) drains
    them instead of killing the process."""
    stop = threading.Event()

    def handler(signum, _frame):
        log.info("signal received, draining", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def wait_for_termination(
    running: list[RunningServer],
    grace: float = 30.0,
    on_stop: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Block until SIGTERM/SIGINT (`stop`, from `termination_requested`), then drain: health
    NOT_SERVING, in-flight calls get `grace` seconds, then `on_stop` (close stores) runs."""
    stop = stop or termination_requested()
    while not stop.wait(0.5):
        pass
    events = [r.stop(grace) for r in running]
    deadline = time.monotonic() + grace + 1
    for ev in events:
        ev.wait(max(0.0, deadline - time.monotonic()))
    if on_stop:
        on_stop()
    log.info("stopped")
