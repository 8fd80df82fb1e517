"""What every client of a tunewire service shares: a channel with the servers' limits, TLS and
token, and domain errors instead of `grpc.RpcError`.

Services call each other through these (the trainer reaches the embedder and the gateway), and the
SDK in `clients/` builds on them; nothing here starts a server.
"""

from __future__ import annotations

import functools

import grpc

from tunewire.channel_limits import channel_options
from tunewire.clients.addresses import channel_options_for, channel_target
from tunewire.errors import from_rpc_error
from tunewire.tls import ClientSecurity


def rpc_errors(fn):
    """Turn grpc.RpcError into the domain error the server sent."""

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return inner


def rpc_iter(fn):
    """`rpc_errors` for a generator: the error is raised where the caller iterates."""

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return inner


def connect(address: str, security: ClientSecurity | None = None) -> grpc.Channel:
    """A channel with the servers' message limits. `security` (default: from TUNEWIRE_TOKEN,
    TUNEWIRE_TOKEN_FILE, TUNEWIRE_TLS_CA/_CERT/_KEY) adds TLS and a bearer token; with none of
    those set the channel is plain, for loopback and in-cluster use. A channel made from certificate
    files follows them: a rotated client certificate, key or CA is used from the next call on."""
    # Headless-Service aware targets (round_robin for dns: names).
    target, extra = channel_target(address), channel_options_for(address)
    security = security or ClientSecurity.from_env()
    return security.channel(target, [*channel_options(), *extra])
