"""TLS for servers (reloaded certificates, optional client certificates) and the client side:
channels with TLS and a bearer token, configured from flags or the environment.

Server certificates are read through grpc's dynamic credentials: gRPC calls our fetcher before
each handshake, and we hand it a new certificate configuration only when a file changed, so
cert-manager or a rotated Secret takes effect on the next connection with no restart.

Clients: `ClientSecurity.from_env()` reads TUNEWIRE_TOKEN / TUNEWIRE_TOKEN_FILE,
TUNEWIRE_TLS_CA, TUNEWIRE_TLS_CERT, TUNEWIRE_TLS_KEY and TUNEWIRE_TLS=1 (TLS verified against the
system's roots, for servers with a public certificate). With none of them set, a channel is
plain and carries no token: loopback and in-cluster use stay as they were. A channel made from
certificate files follows them (`tunewire.reloading_channel`), as the servers do. A channel with
a token also names, in `x-tunewire-on-behalf-of`, the principal the calling code serves
(`tunewire.auth.acting_for_name`), so a service's calls to its peers act for that principal.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog

from tunewire.auth import ON_BEHALF_OF, acting_for_name
from tunewire.reloading_channel import ReloadingChannel
from tunewire.watch import WatchedFile

log = structlog.get_logger("tunewire.tls")


@dataclass(frozen=True)
class ServerTLS:
    """Certificate files of a server; `client_ca` set means mutual TLS (client certs required)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        files = [WatchedFile(self.cert), WatchedFile(self.key)]
        if self.client_ca is not None:
            files.append(WatchedFile(self.client_ca))

        def configuration(contents: list[bytes]):
            ca = contents[2] if len(contents) > 2 else None
            return grpc.ssl_server_certificate_configuration(
                [(contents[1], contents[0])], root_certificates=ca
            )

        initial = configuration([f.read()[0] for f in files])

        def fetch():
            # Called by gRPC before each handshake; None keeps the current configuration.
            try:
                reads = [f.read() for f in files]
                if not any(changed for _, changed in reads):
                    return None
                log.info("server certificates reloaded", cert=str(self.cert))
                return configuration([data for data, _ in reads])
            except Exception as exc:  # noqa: BLE001 - a bad rotation must not stop serving
                log.error(
                    "server certificate reload failed; keeping the previous ones", error=str(exc)
                )
                return None

        return grpc.dynamic_ssl_server_credentials(
            initial, fetch, require_client_authentication=self.client_ca is not None
        )


class _BearerInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer TOKEN` to every call; the token is read per call so a
    rotated token file is picked up by long-lived channels."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [
            (k, v) for k, v in (details.metadata or ()) if k not in ("authorization", ON_BEHALF_OF)
        ]
        metadata.append(("authorization", f"Bearer {self._token()}"))
        # A service serving a principal (or running its job) calls its peers on its behalf.
        acting_for = acting_for_name()
        if acting_for:
            metadata.append((ON_BEHALF_OF, acting_for))
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


@dataclass(frozen=True)
class ClientSecurity:
    """What a client presents: a token (given, or read from a file), and TLS settings. TLS is
    on when a CA or a client certificate is given (`tls=True` forces it with system roots)."""

    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    tls: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientSecurity:
        env = os.environ if env is None else env
        path = lambda name: Path(env[name]) if env.get(name) else None  # noqa: E731
        return cls(
            token=env.get("TUNEWIRE_TOKEN") or None,
            token_file=path("TUNEWIRE_TOKEN_FILE"),
            ca=path("TUNEWIRE_TLS_CA"),
            cert=path("TUNEWIRE_TLS_CERT"),
            key=path("TUNEWIRE_TLS_KEY"),
            tls=env.get("TUNEWIRE_TLS", "").lower() in ("1", "true", "yes"),
        )

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca is not None or self.cert is not None

    def _token_source(self) -> Callable[[], str] | None:
        if self.token:
            token = self.token
            return lambda: token
        if self.token_file is not None:
            watched = WatchedFile(self.token_file)
            watched.read()  # fail now, at connect time, if it is unreadable
            return lambda: watched.read()[0].decode().strip()
        return None

    def _check(self, pem: dict[str, bytes]) -> None:
        """Refuse (ssl.SSLError) a CA that holds no certificate or a key that does not match
        its certificate. gRPC would take them and fail every handshake; refused here, a
        half-done rotation keeps the working channel (`ReloadingChannel`)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if "ca" in pem:
            context.load_verify_locations(cadata=pem["ca"].decode("ascii", "replace"))
        if self.cert is not None and self.key is not None:
            # The files as they are now: a pair caught between its two writes may pass here and
            # fail its handshakes, until the second write, a change, rebuilds the channel.
            context.load_cert_chain(self.cert, self.key)

    def channel(self, target: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        """A channel to `target`: TLS (and a client certificate) when configured, plain
        otherwise; with a token every call carries it. A channel built from certificate files
        follows them (`ReloadingChannel`): a rotated client certificate, key or CA is used from
        the next call on, without re-creating the client."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both --tls-cert and --tls-key")
        source = self._token_source()

        def build(pem: dict[str, bytes]) -> grpc.Channel:
            if self.uses_tls:
                self._check(pem)
                creds = grpc.ssl_channel_credentials(
                    root_certificates=pem.get("ca"),
                    private_key=pem.get("key"),
                    certificate_chain=pem.get("cert"),
                )
                channel = grpc.secure_channel(target, creds, options=options)
            else:
                channel = grpc.insecure_channel(target, options=options)
            if source is None:
                return channel
            return grpc.intercept_channel(channel, _BearerInterceptor(source))

        files = {
            name: path
            for name, path in (("ca", self.ca), ("cert", self.cert), ("key", self.key))
            if path is not None
        }
        return ReloadingChannel(build, files) if files else build({})
