"""Running the HTTP front door with uvicorn: on a socket bound here (port 0 picks a free one, for
tests), with TLS from the services' own certificate and key where given."""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog
import uvicorn

from tunewire.errors import InvalidArgument

log = structlog.get_logger(__name__)


@dataclass
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Optional: client certificates verified against this CA (mutual TLS).
    tls_client_ca: Path | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and its key")


def _loop_factory():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def bind_socket(settings: HttpSettings) -> socket.socket:
    """The listening address, bound (port 0: a free one), for one server or several workers."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except (OSError, OverflowError) as exc:  # in use, not ours, or no such port
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidArgument(
            f"cannot listen on {settings.host}:{settings.port}: {reason}", field="port"
        ) from None
    return sock


def tls_options(settings: HttpSettings) -> dict:
    """uvicorn.Config's TLS arguments for `settings` (none without a certificate)."""
    if settings.tls_cert is None:
        return {}
    import ssl as ssl_module

    ssl = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    if settings.tls_client_ca is not None:
        ssl |= {
            "ssl_ca_certs": str(settings.tls_client_ca),
            "ssl_cert_reqs": ssl_module.CERT_REQUIRED,
        }
    return ssl


class RunningHttp:
    """A uvicorn server on its own thread and event loop."""

    def __init__(self, app, settings: HttpSettings) -> None:
        self.socket = bind_socket(settings)
        self.port = self.socket.getsockname()[1]
        ssl = tls_options(settings)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            loop="auto",
            http="auto",
            timeout_keep_alive=30,
            **ssl,
        )
        self.server = uvicorn.Server(config)
        self.scheme = "https" if ssl else "http"
        self._thread = threading.Thread(
            target=lambda: asyncio.Runner(loop_factory=_loop_factory()).run(
                self.server.serve(sockets=[self.socket])
            ),
            name="http-front-door",
            daemon=True,
        )

    def start(self) -> RunningHttp:
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            self._thread.join(0.01)
        if not self.server.started:
            raise RuntimeError("the HTTP server did not start")
        log.info("http serving", port=self.port, scheme=self.scheme)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self.socket.close()

    def wait(self) -> None:
        self._thread.join()
