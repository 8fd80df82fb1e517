"""`serve http`: the HTTP front door (clients/http) until SIGTERM.

    python clients/cli.py serve http --embedder HOST:PORT --trainer HOST:PORT --model mini=PATH
    python clients/cli.py serve http --model_path results/job-123   # like `ludwig serve`

With service addresses (flags, else TUNEWIRE_EMBEDDER / TUNEWIRE_TRAINER) it fronts those
services. Without them it starts what it needs in this process: with `--model_path` alone an
embedder that may read that artifact (Ludwig serve's one-model server; its predictions are
answered in this process, clients/http/local.py), otherwise the three services over the data
directory, as every other command does.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from tunewire.errors import InvalidArgument
from tunewire.model_names import add_model_flag, models_from_args
from tunewire.paths import default_data_dir

DEFAULT_HTTP_PORT = 8000  # as `ludwig serve`
HTTP_PORT_OFFSET = 3  # `serve all`: the embedder's port + 3


def add_http_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-concurrent-requests",
        "--max_concurrent_requests",
        dest="max_concurrent_requests",
        type=int,
        default=int(os.environ.get("TUNEWIRE_HTTP_MAX_CONCURRENT", "512")),
        help="HTTP requests in flight before 429 (env TUNEWIRE_HTTP_MAX_CONCURRENT)",
    )


def http_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clients/cli.py serve http", add_help=False)
    p.add_argument("--embedder", default=os.environ.get("TUNEWIRE_EMBEDDER"))
    p.add_argument("--trainer", default=os.environ.get("TUNEWIRE_TRAINER"))
    p.add_argument("--model_path", "--model-path", dest="model_path", type=Path, default=None)
    add_model_flag(p)
    add_http_flags(p)
    for name in ("cert", "key", "client_ca"):
        p.add_argument(
            f"--tls-{name.replace('_', '-')}",
            f"--tls_{name}",
            dest=f"tls_{name}",
            type=Path,
            default=os.environ.get(f"TUNEWIRE_SERVER_TLS_{name.upper()}") or None,
        )
    return p


def start_http(backend, host: str, port: int, max_concurrent: int, tls=(None, None, None)):
    """The front door on `host:port` (TLS from the services' certificate and key when given)."""
    from clients.http.app import create_app
    from clients.http.server import HttpSettings, RunningHttp

    cert, key, client_ca = tls
    settings = HttpSettings(host, port, cert, key, client_ca)
    return RunningHttp(create_app(backend, max_concurrent), settings).start()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


def serve_http(args, extra: list[str]) -> int:
    from clients.http.backend import Backend
    from tunewire.logging import configure, get_logger

    parser = http_parser()
    parser.add_argument("--host")  # given to `serve` itself, or to python -m clients.http
    parser.add_argument("--port", type=int)
    opts, unknown = parser.parse_known_args(extra)
    if unknown:
        raise InvalidArgument(f"unknown options for serve http: {' '.join(unknown)}", field="serve")
    models = models_from_args(opts)
    model_path = str(opts.model_path.resolve()) if opts.model_path else None
    if model_path and not (Path(model_path) / "tunewire.json").is_file():
        raise InvalidArgument(f"{model_path!r} is not a tunewire artifact", field="model_path")
    configure()
    started: list = []  # in-process services, stopped last
    embedder, trainer = opts.embedder, opts.trainer
    local_predict = None
    if not embedder and model_path:
        from services.embedder.app import Settings, start

        app = start(
            Settings(
                port=0,
                data_dir=Path(args.data_dir or default_data_dir()).resolve(),
                models=models,
                artifact_roots=[Path(model_path)],
            )
        )
        started.append(app)
        embedder = f"127.0.0.1:{app.port}"
        # Ours, in this process, without tokens: predictions skip the loopback gRPC call.
        from clients.http.local import LocalPredictions

        local_predict = LocalPredictions(app.servicer)
    elif not embedder:
        from clients.embedded import start_embedded

        services = start_embedded(args.data_dir, models=models)
        started.append(services)
        embedder, trainer = services.embedder_address, services.trainer_address
    backend = Backend(
        embedder, trainer, models, served_model=model_path, local_predict=local_predict
    )
    running = start_http(
        backend,
        args.host or "127.0.0.1",
        DEFAULT_HTTP_PORT if args.port is None else args.port,
        opts.max_concurrent_requests,
        (opts.tls_cert, opts.tls_key, opts.tls_client_ca),
    )
    get_logger("tunewire.cli").info(
        "serving http",
        url=f"{running.scheme}://{args.host or '127.0.0.1'}:{running.port}",
        embedder=embedder,
        trainer=trainer,
        models=list(models),
        model_path=model_path,
    )
    try:
        _wait_for_signal()
    finally:
        running.stop()
        backend.close()
        for item in reversed(started):
            item.stop() if hasattr(item, "stop") else item.close()
    return 0
