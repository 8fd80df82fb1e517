"""How a command reaches the services: a remote address (with the caller's token and TLS), or
the three services started embedded in this process for the command."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from clients.commands.parsing import add_logging_level, flag

_flag = flag


def add_connection(p: argparse.ArgumentParser, service: str = "trainer") -> None:
    env = {"trainer": "TUNEWIRE_TRAINER", "embedder": "TUNEWIRE_EMBEDDER"}[service]
    p.add_argument(
        f"--{service}",
        default=os.environ.get(env),
        help=f"{service} address HOST:PORT (env {env}); default: start the services "
        "embedded in this process",
    )
    p.add_argument(
        *_flag("--data_dir"),
        dest="data_dir",
        type=Path,
        default=None,
        help="state directory for the embedded services (env TUNEWIRE_DATA_DIR, "
        "default: ./.tunewire)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show service logs (-l info)")
    add_logging_level(p)
    sec = p.add_argument_group("security (a remote server's token and TLS)")
    sec.add_argument(
        "--token",
        dest="auth_token",
        default=None,
        help="bearer token (env TUNEWIRE_TOKEN, or a file in TUNEWIRE_TOKEN_FILE)",
    )
    for name, what in (
        ("ca", "CA bundle that verifies the server; turns TLS on"),
        ("cert", "client certificate for mutual TLS"),
        ("key", "client private key for mutual TLS"),
    ):
        sec.add_argument(
            *_flag(f"--tls_{name}"),
            dest=f"tls_{name}",
            type=Path,
            default=None,
            help=f"{what} (env TUNEWIRE_TLS_{name.upper()})",
        )


def _channel(args, address: str):
    """A channel to a remote server: the flags above, each falling back to its env variable."""
    from dataclasses import replace

    from clients.sdk import connect
    from tunewire.tls import ClientSecurity

    security = ClientSecurity.from_env()
    flags = {
        "token": args.auth_token,
        "ca": args.tls_ca,
        "cert": args.tls_cert,
        "key": args.tls_key,
    }
    return connect(address, replace(security, **{k: v for k, v in flags.items() if v}))


@contextlib.contextmanager
def trainer_client(args):
    """A TrainerClient on the given address, or on embedded services started for this command."""
    from clients.sdk import TrainerClient

    if args.trainer:
        client = TrainerClient(args.trainer, channel=_channel(args, args.trainer))
        try:
            yield client
        finally:
            client.close()
        return
    from clients.embedded import start_embedded

    with start_embedded(args.data_dir, freeze=getattr(args, "program", False)) as services:
        client = TrainerClient(services.trainer_address)
        try:
            yield client
        finally:
            client.close()
