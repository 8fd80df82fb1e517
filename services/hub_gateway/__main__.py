"""`python -m services.hub_gateway`: run the hub gateway until SIGTERM."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tunewire.logging import configure
from tunewire.paths import default_data_dir
from tunewire.server_flags import add_security_flags, export_peer_token, security_from_args, serve


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="python -m services.hub_gateway", description="tunewire hub gateway server"
    )
    env = os.environ.get
    p.add_argument("--host", default=env("TUNEWIRE_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("TUNEWIRE_PORT", "50053")))
    p.add_argument("--data-dir", "--data_dir", type=Path, default=default_data_dir())
    p.add_argument(
        "--trainer",
        default=env("TUNEWIRE_TRAINER"),
        help="trainer address HOST:PORT, to fetch job artifacts (env TUNEWIRE_TRAINER)",
    )
    roots = [Path(r) for r in env("TUNEWIRE_ARTIFACT_ROOTS", "").split(os.pathsep) if r]
    p.add_argument(
        "--artifact-root",
        "--artifact_root",
        type=Path,
        action="append",
        default=None,
        help="directory the gateway may read artifacts from (repeatable; env "
        "TUNEWIRE_ARTIFACT_ROOTS, os.pathsep-separated)",
    )
    p.set_defaults(env_artifact_roots=roots)
    p.add_argument(
        "--token-file",
        "--token_file",
        type=Path,
        default=Path(env("HF_TOKEN_PATH")) if env("HF_TOKEN_PATH") else None,
        help="file holding the Hub token (env HF_TOKEN_PATH); else HF_TOKEN",
    )
    p.add_argument(
        "--endpoint",
        default=env("HF_ENDPOINT"),
        help="Hub endpoint URL (env HF_ENDPOINT; default https://huggingface.co)",
    )
    p.add_argument(
        "--max-message-bytes",
        "--max_message_bytes",
        type=int,
        default=int(env("TUNEWIRE_GATEWAY_MAX_MESSAGE_BYTES", str(4 << 20))),
        help="largest gRPC message (an upload chunk; clients send 2 MiB); beyond it "
        "RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--max-receiving-uploads",
        "--max_receiving_uploads",
        type=int,
        default=int(env("TUNEWIRE_MAX_RECEIVING_UPLOADS", "8")),
        help="uploads received at once; one more is RESOURCE_EXHAUSTED (UPLOADS_BUSY)",
    )
    add_security_flags(p, calls_peers=True)
    return p


def settings_from_args(args: argparse.Namespace):
    from services.hub_gateway.app import Settings

    roots = args.artifact_root if args.artifact_root is not None else args.env_artifact_roots
    return Settings(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        trainer_address=args.trainer,
        artifact_roots=list(roots),
        token_file=args.token_file,
        endpoint=args.endpoint,
        max_message_bytes=args.max_message_bytes,
        max_receiving_uploads=args.max_receiving_uploads,
        security=security_from_args(args),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure()
    export_peer_token(args)
    from services.hub_gateway.app import start

    return serve(
        "hub_gateway", args, start, settings_from_args(args), lambda app: app.manager.close()
    )


if __name__ == "__main__":
    sys.exit(main())
