"""One server bootstrap for all three services.

`create_server()` builds a grpc.Server with the message-size limits, keepalive and connection-age
options every service uses, an interceptor that binds request context to the log and maps domain
errors to gRPC status (the one table is in `tunewire.errors`), the standard health service (each
service NOT_SERVING until its owner marks it ready) and server reflection. It returns a
`RunningServer` that carries the bound port, so tests can bind port 0.

`ServerSecurity` adds what a server exposed beyond loopback needs: bearer-token auth
(`tunewire.auth`, health stays open), TLS or mutual TLS with reloaded certificates
(`tunewire.tls`), reflection off, and a cap on concurrent calls (RESOURCE_EXHAUSTED beyond it).
Its `health_port` adds a second, plaintext port serving grpc.health.v1 only, because the kubelet's
native gRPC probes cannot speak TLS: without it a TLS server would never turn ready.
"""

from __future__ import annotations

import errno
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tunewire.auth import AuthInterceptor, TokenFile
from tunewire.errors import ResourceExhausted, TunewireError, to_status
from tunewire.tls import ServerTLS

log = structlog.get_logger("tunewire.server")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Chunks of large streams stay well under the message limit.
STREAM_CHUNK_BYTES = 2 * 1024 * 1024
# Calls in flight (including long Watch streams) before new ones get RESOURCE_EXHAUSTED.
DEFAULT_MAX_CONCURRENT_RPCS = 128


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Client channel options matching the servers' limits."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


@dataclass
class ServerSecurity:
    """Auth, TLS, reflection and the concurrency cap; the defaults are the plain loopback
    server (no token, no TLS, reflection on)."""

    # `TOKEN ROLE NAME [HUB_NAMESPACES]` lines (tunewire.auth); None: no authentication.
    auth_tokens_file: Path | None = None
    tls: ServerTLS | None = None
    reflection: bool = True
    # None: unlimited (calls queue for a worker thread instead of being refused).
    max_concurrent_rpcs: int | None = DEFAULT_MAX_CONCURRENT_RPCS
    # A plaintext port answering grpc.health.v1 only (the kubelet's probes); None: none, 0: any.
    health_port: int | None = None


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 0
    max_workers: int = 16
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # Servers close connections after this long so clients re-resolve DNS (headless Services).
    max_connection_age_s: float = 300.0
    max_connection_age_grace_s: float = 30.0
    security: ServerSecurity = field(default_factory=ServerSecurity)
    extra_interceptors: list[grpc.ServerInterceptor] = field(default_factory=list)


class _ContextInterceptor(grpc.ServerInterceptor):
    """Binds request id and method to the log context and maps domain errors to status."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        request_id = metadata.get("x-request-id") or uuid.uuid4().hex[:12]

        def bind() -> None:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=request_id, method=method)

        def fail(context: grpc.ServicerContext, exc: BaseException) -> None:
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
                context.abort_with_status(to_status(exc))
            log.exception("unhandled error")
            context.abort(grpc.StatusCode.INTERNAL, "internal error (see the server log)")

        def wrap_unary(fn):
            def inner(request, context):
                bind()
                try:
                    return fn(request, context)
                except grpc.RpcError:
                    raise
                except Exception as exc:  # noqa: BLE001 - mapped to a status here, once
                    if _aborted(context):
                        raise
                    fail(context, exc)

            return inner

        def wrap_stream(fn):
            def inner(request, context):
                bind()
                try:
                    yield from fn(request, context)
                except grpc.RpcError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    if _aborted(context):
                        raise
                    fail(context, exc)

            return inner

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary(handler.unary_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary(handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream(handler.unary_stream),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream(handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )


# Status details travel in trailing metadata, which clients cap (8 KiB by default); a message
# echoing a huge client-sent value would turn into RESOURCE_EXHAUSTED on the client.
MAX_ERROR_MESSAGE_CHARS = 1024


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


def _aborted(context: grpc.ServicerContext) -> bool:
    # context.abort() raises a plain Exception after setting the code; let it through untouched.
    try:
        return context.code() is not None
    except Exception:  # noqa: BLE001
        return False


@dataclass
class Service:
    """A servicer and how to register it: `add` is the generated `add_XServicer_to_server`."""

    name: str  # full service name, e.g. "tunewire.v1.EmbedderService"
    servicer: Any
    add: Callable[[Any, grpc.Server], None]


class RunningServer:
    """A started server with its health servicer; `set_ready` flips a service to SERVING.
    `health_server`/`health_port`: the plaintext health-only server, when there is one."""

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        names: list[str],
        health_server: grpc.Server | None = None,
        health_port: int | None = None,
    ) -> None:
        self.server = server
        self.port = port
        self.health = health_servicer
        self.names = names
        self.health_server = health_server
        self.health_port = health_port

    def set_ready(self, name: str, ready: bool = True) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set(name, status)
        if all(self._status(n) == health_pb2.HealthCheckResponse.SERVING for n in self.names):
            self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        else:
            self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    def _status(self, name: str) -> int:
        try:
            return self.health.Check(health_pb2.HealthCheckRequest(service=name), None).status
        except Exception:  # noqa: BLE001
            return health_pb2.HealthCheckResponse.UNKNOWN

    def stop(self, grace: float | None = 10.0) -> threading.Event:
        """Stop accepting calls, let in-flight ones finish within `grace` seconds. The health
        port keeps answering (NOT_SERVING) until the main server has stopped, so the probes see
        the drain rather than a refused connection; the event is set once both are down."""
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(grace)
        if self.health_server is None:
            return stopped
        done = threading.Event()
        health_server = self.health_server

        def stop_health() -> None:
            stopped.wait()
            health_server.stop(None).wait()
            done.set()

        threading.Thread(target=stop_health, name="health-stop", daemon=True).start()
        return done


# The kubelet sends a few probes at a time; beyond this many calls (Watch streams hold one each)
# the health port refuses at once rather than queue a probe behind them until it times out.
HEALTH_PORT_MAX_RPCS = 4


def _health_only_server(
    health_servicer: health.HealthServicer, host: str, port: int
) -> tuple[grpc.Server, int]:
    """A plaintext server with nothing but grpc.health.v1, sharing `health_servicer` with the
    main server so both report the same status. No reflection, no auth (health is open on the
    main port too), no service: a plaintext caller learns only what a probe learns."""
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=HEALTH_PORT_MAX_RPCS, thread_name_prefix="grpc-health"
        ),
        options=[("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=HEALTH_PORT_MAX_RPCS,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind the health port {host}:{port}")
    server.start()
    return server, bound


def create_server(
    services: Iterable[Service], settings: ServerSettings | None = None
) -> RunningServer:
    """Build, bind and start a server; returns it with the bound port."""
    settings = settings or ServerSettings()
    services = list(services)
    options = [
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
    security = settings.security
    # Auth runs first: a refused call reaches nothing else.
    auth = (
        [AuthInterceptor(TokenFile(security.auth_tokens_file))]
        if security.auth_tokens_file is not None
        else []
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="grpc"),
        interceptors=[*auth, *settings.extra_interceptors, _ContextInterceptor()],
        options=options,
        maximum_concurrent_rpcs=security.max_concurrent_rpcs,
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = []
    for svc in services:
        svc.add(svc.servicer, server)
        names.append(svc.name)
        health_servicer.set(svc.name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    if security.reflection:
        reflection.enable_server_reflection(
            [
                *names,
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
        health_server, health_port = _health_only_server(
            health_servicer, settings.host, security.health_port
        )
    server.start()
    log.info(
        "server started",
        services=names,
        address=f"{settings.host}:{port}",
        tls="mutual" if security.tls and security.tls.client_ca else bool(security.tls),
        auth=security.auth_tokens_file is not None,
        reflection=security.reflection,
        max_concurrent_rpcs=security.max_concurrent_rpcs,
        health_port=health_port,
    )
    return RunningServer(server, port, health_servicer, names, health_server, health_port)


def wait_for_termination(
    running: list[RunningServer], grace: float = 30.0, on_stop: Callable[[], None] | None = None
) -> None:
    """Block until SIGTERM/SIGINT, then drain: health NOT_SERVING, in-flight calls get `grace`
    seconds, then `on_stop` (close stores) runs."""
    stop = threading.Event()

    def handler(signum, _frame):
        log.info("signal received, draining", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.wait(0.5):
        pass
    events = [r.stop(grace) for r in running]
    deadline = time.monotonic() + grace + 1
    for ev in events:
        ev.wait(max(0.0, deadline - time.monotonic()))
    if on_stop:
        on_stop()
    log.info("stopped")
