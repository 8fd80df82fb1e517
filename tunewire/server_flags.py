"""The security and limit flags every service's `__main__` takes, with their env fallbacks.

One definition so that the three services spell them the same way:

    --auth-tokens-file   TUNEWIRE_AUTH_TOKENS_FILE   `TOKEN ROLE NAME [NS]` lines; unset: no auth
    --tls-cert/--tls-key TUNEWIRE_SERVER_TLS_CERT/_KEY  serve TLS with this certificate
    --tls-client-ca      TUNEWIRE_SERVER_TLS_CLIENT_CA  require client certificates (mutual TLS)
    --no-reflection      TUNEWIRE_NO_REFLECTION=1       turn server reflection off
    --max-concurrent-rpcs TUNEWIRE_MAX_CONCURRENT_RPCS  unary calls in progress before
                                                        RESOURCE_EXHAUSTED (streams: below)
    --max-streams-per-principal TUNEWIRE_MAX_STREAMS_PER_PRINCIPAL  open streams per caller
    --max-health-watches TUNEWIRE_MAX_HEALTH_WATCHES    open Health.Watch streams per server
    --stream-idle-timeout TUNEWIRE_STREAM_IDLE_TIMEOUT  seconds a client stream may stay silent
    --metrics-port       TUNEWIRE_METRICS_PORT          serve Prometheus metrics on /metrics
    --service-token-file TUNEWIRE_TOKEN_FILE            token this service sends to the others
    --health-port        TUNEWIRE_HEALTH_PORT           plaintext port serving health only

The server's own certificate variables are distinct from the client ones (TUNEWIRE_TLS_CA/_CERT/
_KEY, `tunewire.tls.ClientSecurity`) because a service is both: it serves with one certificate and
calls its peers trusting a CA, possibly presenting a client certificate.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

import structlog

from tunewire.calls import (
    DEFAULT_MAX_CONCURRENT_RPCS,
    DEFAULT_MAX_HEALTH_WATCHES,
    DEFAULT_MAX_STREAMS_PER_PRINCIPAL,
    DEFAULT_STREAM_IDLE_TIMEOUT_S,
)
from tunewire.server import ServerSecurity
from tunewire.tls import ServerTLS


def _path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


def add_security_flags(p: argparse.ArgumentParser, calls_peers: bool = False) -> None:
    """Add the flags above; `calls_peers` adds --service-token-file (trainer, hub_gateway)."""
    p.add_argument(
        "--auth-tokens-file",
        "--auth_tokens_file",
        type=Path,
        default=_path("TUNEWIRE_AUTH_TOKENS_FILE"),
        help="'TOKEN ROLE NAME [HUB_NAMESPACES]' lines (roles: admin, train, embed, read, "
        "service), reloaded when changed; without it the server takes calls without a token "
        "(env TUNEWIRE_AUTH_TOKENS_FILE)",
    )
    p.add_argument(
        "--tls-cert",
        "--tls_cert",
        type=Path,
        default=_path("TUNEWIRE_SERVER_TLS_CERT"),
        help="server certificate chain (PEM), reloaded when changed",
    )
    p.add_argument(
        "--tls-key",
        "--tls_key",
        type=Path,
        default=_path("TUNEWIRE_SERVER_TLS_KEY"),
        help="server private key (PEM)",
    )
    p.add_argument(
        "--tls-client-ca",
        "--tls_client_ca",
        type=Path,
        default=_path("TUNEWIRE_SERVER_TLS_CLIENT_CA"),
        help="CA that client certificates must chain to (mutual TLS)",
    )
    p.add_argument(
        "--no-reflection",
        "--no_reflection",
        dest="reflection",
        action="store_false",
        default=os.environ.get("TUNEWIRE_NO_REFLECTION", "") not in ("1", "true"),
        help="turn gRPC server reflection off",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        "--max_concurrent_rpcs",
        type=int,
        default=_env_int("TUNEWIRE_MAX_CONCURRENT_RPCS", DEFAULT_MAX_CONCURRENT_RPCS),
        help="unary calls in progress (running or waiting for a thread) before new ones get "
        "RESOURCE_EXHAUSTED; streams are capped per principal instead (0: no cap; "
        f"default {DEFAULT_MAX_CONCURRENT_RPCS}; env TUNEWIRE_MAX_CONCURRENT_RPCS)",
    )
    p.add_argument(
        "--max-streams-per-principal",
        "--max_streams_per_principal",
        type=int,
        default=_env_int("TUNEWIRE_MAX_STREAMS_PER_PRINCIPAL", DEFAULT_MAX_STREAMS_PER_PRINCIPAL),
        help="streams (WatchJob, uploads, StreamEmbed...) one principal may hold open; beyond "
        "it the new stream gets RESOURCE_EXHAUSTED (0: no cap; default "
        f"{DEFAULT_MAX_STREAMS_PER_PRINCIPAL}; env TUNEWIRE_MAX_STREAMS_PER_PRINCIPAL)",
    )
    p.add_argument(
        "--max-health-watches",
        "--max_health_watches",
        type=int,
        default=_env_int("TUNEWIRE_MAX_HEALTH_WATCHES", DEFAULT_MAX_HEALTH_WATCHES),
        help="Health.Watch streams (no token needed) open on this server at once (0: no cap; "
        f"default {DEFAULT_MAX_HEALTH_WATCHES}; env TUNEWIRE_MAX_HEALTH_WATCHES)",
    )
    p.add_argument(
        "--stream-idle-timeout",
        "--stream_idle_timeout",
        type=float,
        default=float(
            os.environ.get("TUNEWIRE_STREAM_IDLE_TIMEOUT") or DEFAULT_STREAM_IDLE_TIMEOUT_S
        ),
        metavar="SECONDS",
        help="a client stream (upload, StreamEmbed) that sends nothing for this long while the "
        "server owes it nothing is closed with DEADLINE_EXCEEDED (0: never; default "
        f"{DEFAULT_STREAM_IDLE_TIMEOUT_S:g}; env TUNEWIRE_STREAM_IDLE_TIMEOUT)",
    )
    p.add_argument(
        "--metrics-port",
        "--metrics_port",
        type=int,
        default=_env_int("TUNEWIRE_METRICS_PORT", None),
        help="serve Prometheus metrics (and nothing else, no token) over HTTP on this port at "
        "/metrics (env TUNEWIRE_METRICS_PORT; default: off)",
    )
    p.add_argument(
        "--health-port",
        "--health_port",
        type=int,
        default=int(os.environ["TUNEWIRE_HEALTH_PORT"])
        if os.environ.get("TUNEWIRE_HEALTH_PORT")
        else None,
        help="also serve grpc.health.v1, and only it, in plaintext on this port: the "
        "kubelet's gRPC probes cannot speak TLS (env TUNEWIRE_HEALTH_PORT)",
    )
    if calls_peers:
        p.add_argument(
            "--service-token-file",
            "--service_token_file",
            type=Path,
            default=_path("TUNEWIRE_TOKEN_FILE"),
            help="token this service sends to its peers (env TUNEWIRE_TOKEN_FILE, "
            "or the token itself in TUNEWIRE_TOKEN)",
        )


_FILE_FLAGS = (
    ("auth_tokens_file", "--auth-tokens-file"),
    ("tls_cert", "--tls-cert"),
    ("tls_key", "--tls-key"),
    ("tls_client_ca", "--tls-client-ca"),
)


def _check_readable(args: argparse.Namespace) -> None:
    """Each file a flag names is readable now: at start a missing tokens file or certificate
    is one line naming the flag, not a traceback from the first reload."""
    for attr, flag in _FILE_FLAGS:
        path = getattr(args, attr, None)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise SystemExit(f"{flag} {path}: cannot read it ({exc.strerror})") from None


_LOOPBACK_NAMES = ("localhost", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """Whether `host` is only reachable from this machine."""
    name = host.strip("[]")
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name or a wildcard: assume reachable


def warn_if_exposed(host: str, security: ServerSecurity, service: str) -> None:
    """A server reachable from other machines with neither tokens nor TLS takes anyone's calls
    in plaintext: said loudly at start (embedded use on loopback says nothing)."""
    if is_loopback(host) or security.auth_tokens_file is not None or security.tls is not None:
        return
    structlog.get_logger("tunewire.security").warning(
        "UNPROTECTED: serving on a non-loopback address with no --auth-tokens-file and no "
        "--tls-cert; anyone who reaches this port may call every RPC, in plaintext",
        service=service,
        host=host,
    )


def security_from_args(args: argparse.Namespace) -> ServerSecurity:
    """ServerSecurity from parsed flags; a half-given TLS pair is a usage error, and so is a
    named file that cannot be read."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
    _check_readable(args)
    tls = (
        ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca)
        if args.tls_cert is not None
        else None
    )
    return ServerSecurity(
        auth_tokens_file=args.auth_tokens_file,
        tls=tls,
        reflection=args.reflection,
        max_concurrent_rpcs=args.max_concurrent_rpcs or None,
        health_port=args.health_port,
        max_streams_per_principal=args.max_streams_per_principal or None,
        max_health_watches=args.max_health_watches or None,
        stream_idle_timeout_s=args.stream_idle_timeout or None,
    )


def export_peer_token(args: argparse.Namespace) -> None:
    """Make --service-token-file the token every outgoing channel of this process sends
    (`ClientSecurity.from_env` reads TUNEWIRE_TOKEN_FILE)."""
    path = getattr(args, "service_token_file", None)
    if path is not None:
        os.environ["TUNEWIRE_TOKEN_FILE"] = str(path)
        os.environ.pop("TUNEWIRE_TOKEN", None)


def start_operations(args: argparse.Namespace, service_name: str):
    """Metrics on --metrics-port and traces to OTEL_EXPORTER_OTLP_ENDPOINT, where set, before
    the servers start; returns the metrics server (None when off) for the caller to close."""
    from tunewire import tracing

    tracing.configure_from_env(service_name)
    port = getattr(args, "metrics_port", None)
    if port is None:
        return None
    from tunewire import metrics

    try:
        return metrics.serve(port)
    except OSError as exc:
        raise SystemExit(f"--metrics-port {port}: {exc.strerror or exc}") from None


def serve(name: str, args: argparse.Namespace, start, settings, on_stop) -> int:
    """The shared tail of every service's `main`: metrics and traces, log where it serves,
    then block until SIGTERM and drain. `start(settings)` returns the app; `on_stop(app)`
    closes its stores."""
    from tunewire import tracing
    from tunewire.logging import get_logger
    from tunewire.server import termination_requested, wait_for_termination

    stop_requested = termination_requested()
    warn_if_exposed(args.host, settings.security, name)
    metrics_server = start_operations(args, f"tunewire-{name}")
    app = start(settings)
    get_logger(f"services.{name}").info(
        f"{name} serving",
        port=app.port,
        data_dir=str(args.data_dir),
        metrics_port=metrics_server.port if metrics_server else None,
    )
    wait_for_termination([app.running], on_stop=lambda: on_stop(app), stop=stop_requested)
    if metrics_server is not None:
        metrics_server.close()
    tracing.shutdown()
    return 0
