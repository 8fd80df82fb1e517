"""`python -m services.trainer`: run the trainer server until SIGTERM."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tunewire.logging import configure, get_logger
from tunewire.server import wait_for_termination


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m services.trainer",
                                          description="tunewire trainer server")
    env = os.environ.get
    p.add_argument("--host", default=env("TUNEWIRE_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("TUNEWIRE_PORT", "50052")))
    p.add_argument("--data-dir", "--data_dir", type=Path,
                   default=Path(env("TUNEWIRE_DATA_DIR", ".data")))
    p.add_argument("--embedder", default=env("TUNEWIRE_EMBEDDER"),
                   help="embedder address HOST:PORT (env TUNEWIRE_EMBEDDER)")
    p.add_argument("--hub-gateway", "--hub_gateway", default=env("TUNEWIRE_HUB_GATEWAY"),
                   help="hub_gateway address HOST:PORT (env TUNEWIRE_HUB_GATEWAY)")
    p.add_argument("--workers", type=int, default=int(env("TUNEWIRE_TRAINER_WORKERS", "1")),
                   help="jobs run at once")
    p.add_argument("--model-root", "--model_root", type=Path, action="append", default=[],
                   help="extra directory Predict may read artifacts from (repeatable)")
    return p


def settings_from_args(args: argparse.Namespace):
    from services.trainer.app import Settings

    return Settings(data_dir=args.data_dir, host=args.host, port=args.port,
                    embedder=args.embedder, hub_gateway=args.hub_gateway,
                    workers=args.workers, model_roots=list(args.model_root))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure()
    from services.trainer.app import start

    app = start(settings_from_args(args))
    get_logger("services.trainer").info("trainer serving", port=app.port,
                                        data_dir=str(args.data_dir))
    wait_for_termination([app.running], on_stop=app.close)
    return 0


if __name__ == "__main__":
    sys.exit(main())
