"""`python -m clients.http`: the HTTP front door alone, in front of running services (a
Kubernetes Deployment's entrypoint). `clients/cli.py serve http` is the same with the embedded
fallbacks; this one always needs the services' addresses."""

from __future__ import annotations

import argparse
import os
import sys

from clients.commands.serve_http import DEFAULT_HTTP_PORT, http_parser, serve_http


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clients.http", parents=[http_parser()], description=__doc__
    )
    parser.add_argument("--host", default=os.environ.get("TUNEWIRE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT)
    args, _ = parser.parse_known_args(argv)
    if not args.embedder:
        parser.error("--embedder (or TUNEWIRE_EMBEDDER) is required")
    common = argparse.Namespace(host=args.host, port=args.port, data_dir=None)
    return serve_http(common, list(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
