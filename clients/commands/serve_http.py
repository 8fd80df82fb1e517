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

from tunewire.compute_dtype_flag import add_compute_dtype_flag
from tunewire.errors import InvalidArgument
from tunewire.model_names import add_model_flag, models_from_args
from tunewire.paths import default_data_dir

DEFAULT_HTTP_PORT = 8000  # as `ludwig serve`
HTTP_PORT_OFFSET = 3  # `serve all`: the embedder's port + 3
# Set by `serve all` for the front door it starts as a child process.
_DIE_WITH_PARENT = "TUNEWIRE_HTTP_DIE_WITH_PARENT"


def add_http_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-concurrent-requests",
        "--max_concurrent_requests",
        dest="max_concurrent_requests",
        type=int,
        default=int(os.environ.get("TUNEWIRE_HTTP_MAX_CONCURRENT", "512")),
        help="HTTP requests in flight before 429, per worker process "
        "(env TUNEWIRE_HTTP_MAX_CONCURRENT)",
    )


def check_http_flags(opts: argparse.Namespace) -> None:
    """What argparse's types do not say, refused by name before anything starts."""
    from clients.http.backend import calls_in_flight
    from clients.http.limits import env_limits

    if opts.max_concurrent_requests < 1:
        raise InvalidArgument("must be at least 1", field="max_concurrent_requests")
    env_limits()
    calls_in_flight()


def _workers(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, not {value!r}")
    return n


# `serve all`'s front door: one process of its own beside the services. In their process, its
# per-request Python work shared the embedder's GIL: 444 against 548 texts/s on the H200
# (bench/results/online_serving_h200.md). Two processes did better there (696 against 485
# texts/s; 1020 against 581 with `--cuda-graphs`), four no better than two: `--http-workers 2`
# on a GPU host; one stays the default for small hosts.
DEFAULT_SERVE_ALL_HTTP_WORKERS = 1


def add_http_workers_flag(p: argparse.ArgumentParser) -> None:
    """`serve all --http-workers N`."""
    p.add_argument(
        "--http-workers",
        "--http_workers",
        dest="http_workers",
        type=_workers,
        default=os.environ.get("TUNEWIRE_SERVE_ALL_HTTP_WORKERS") or DEFAULT_SERVE_ALL_HTTP_WORKERS,
        help="N: the HTTP front door in N processes of its own beside the services (`serve "
        "http --workers N`), off their GIL (default 1); 0: in their process (env "
        "TUNEWIRE_SERVE_ALL_HTTP_WORKERS)",
    )


def http_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clients/cli.py serve http", add_help=False)
    p.add_argument("--embedder", default=os.environ.get("TUNEWIRE_EMBEDDER"))
    p.add_argument("--trainer", default=os.environ.get("TUNEWIRE_TRAINER"))
    p.add_argument("--model_path", "--model-path", dest="model_path", type=Path, default=None)
    p.add_argument(
        "--workers",
        type=_workers,
        default=_workers(os.environ.get("TUNEWIRE_HTTP_WORKERS", "1")),
        help="front-door processes sharing the port (uvicorn's workers, clients/http/"
        "workers.py); 1: this process alone (env TUNEWIRE_HTTP_WORKERS)",
    )
    add_model_flag(p)
    add_compute_dtype_flag(p)
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


class HttpProcess:
    """`serve http` in a child process (`serve all --http-workers N`): started, then stopped
    with SIGTERM (its workers drain), killed if it has not ended in `grace` seconds."""

    def __init__(self, argv: list[str], host: str, port: int, scheme: str) -> None:
        import subprocess
        import sys

        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        # The child dies with this process (a SIGKILL here leaves no front door behind).
        env = {**os.environ, "PYTHONPATH": path, _DIE_WITH_PARENT: str(os.getpid())}
        self.process = subprocess.Popen([sys.executable, "-m", "clients.http", *argv], env=env)
        self.host, self.port, self.scheme = host, port, scheme

    def wait_ready(self, timeout: float = 120.0) -> HttpProcess:
        """Returns once the port accepts connections; RuntimeError if the child ended."""
        import socket
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the HTTP front door exited ({self.process.returncode})")
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the HTTP front door did not start in {timeout:.0f} s")

    def stop(self, grace: float = 30.0) -> None:
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_http_process(
    embedder: str,
    trainer: str | None,
    models: dict[str, str],
    host: str,
    port: int,
    max_concurrent: int,
    tls,
    workers: int,
) -> HttpProcess:
    """The front door as `workers` processes of its own, calling these services over gRPC;
    port 0 picks a free one."""
    import socket

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    argv = ["--embedder", embedder, "--host", host, "--port", str(port), "--workers", str(workers)]
    argv += ["--max-concurrent-requests", str(max_concurrent)]
    if trainer:
        argv += ["--trainer", trainer]
    for name, path in models.items():
        argv += ["--model", f"{name}={path}"]
    for flag, value in zip(("--tls-cert", "--tls-key", "--tls-client-ca"), tls, strict=True):
        if value is not None:
            argv += [flag, str(value)]
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
    child = HttpProcess(argv, connect_host, port, "https" if tls[0] is not None else "http")
    return child.wait_ready()


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
    if parent := os.environ.pop(_DIE_WITH_PARENT, None):
        from clients.http.workers import die_with_parent

        die_with_parent(int(parent))
    if unknown:
        raise InvalidArgument(f"unknown options for serve http: {' '.join(unknown)}", field="serve")
    models = models_from_args(opts)
    if opts.workers < 1:
        raise InvalidArgument("must be at least 1", field="workers")
    check_http_flags(opts)
    model_path = str(opts.model_path.resolve()) if opts.model_path else None
    if model_path and not (Path(model_path) / "tunewire.json").is_file():
        raise InvalidArgument(f"{model_path!r} is not a tunewire artifact", field="model_path")
    given = {a.split("=")[0] for a in extra} & {"--compute-dtype", "--compute_dtype"}
    if opts.embedder and given:  # (TUNEWIRE_COMPUTE_DTYPE may be meant for that embedder)
        raise InvalidArgument(
            f"sets the dtype of an embedder this command starts; the one at {opts.embedder} "
            "has its own (serve embedder --compute-dtype)",
            field="compute_dtype",
        )
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
                compute_dtype=opts.compute_dtype,
            )
        )
        started.append(app)
        embedder = f"127.0.0.1:{app.port}"
        if opts.workers == 1:
            # Ours, in this process, without tokens: predictions skip the loopback gRPC call.
            from clients.http.local import LocalPredictions

            local_predict = LocalPredictions(app.servicer)
    elif not embedder:
        from clients.embedded import start_embedded

        services = start_embedded(args.data_dir, models=models, compute_dtype=opts.compute_dtype)
        started.append(services)
        embedder, trainer = services.embedder_address, services.trainer_address
    host = args.host or "127.0.0.1"
    port = DEFAULT_HTTP_PORT if args.port is None else args.port
    tls = (opts.tls_cert, opts.tls_key, opts.tls_client_ca)
    if opts.workers > 1:
        return _serve_workers(opts, host, port, tls, embedder, trainer, models, model_path, started)
    backend = Backend(
        embedder, trainer, models, served_model=model_path, local_predict=local_predict
    )
    running = start_http(backend, host, port, opts.max_concurrent_requests, tls)
    get_logger("tunewire.cli").info(
        "serving http",
        url=f"{running.scheme}://{host}:{running.port}",
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


def _serve_workers(opts, host, port, tls, embedder, trainer, models, model_path, started) -> int:
    """`--workers N`: N front-door processes (clients/http/workers.py) calling `embedder` and
    `trainer` over gRPC; services started here stop when the workers have."""
    from clients.http.server import HttpSettings
    from clients.http.workers import WorkerSettings, serve_workers
    from tunewire.logging import get_logger

    get_logger("tunewire.cli").info(
        "serving http",
        workers=opts.workers,
        embedder=embedder,
        trainer=trainer,
        models=list(models),
        model_path=model_path,
    )
    try:
        serve_workers(
            HttpSettings(host, port, *tls),
            WorkerSettings(
                embedder, trainer, models, opts.max_concurrent_requests, served_model=model_path
            ),
            opts.workers,
        )
    finally:
        for item in reversed(started):
            item.stop() if hasattr(item, "stop") else item.close()
    return 0
