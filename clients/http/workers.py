"""The front door in several processes: `serve http --workers N` (and `serve all --http-workers N`).

One Python process answers HTTP on one core: parsing, validation, the base64 answers and the
gRPC calls to the embedder all hold its GIL, which bounded `/v1/embeddings` far below what the
embedder computes (bench/results/online_serving_h200.md). Here uvicorn's own supervisor
(`uvicorn.supervisors.Multiprocess`, what `uvicorn --workers N` runs) starts N worker processes
that accept from one listening socket bound here, restarts one that dies and stops them all on
SIGTERM/SIGINT. Each worker builds the app from `WorkerSettings` (passed in the environment, as
spawned processes inherit it) and calls the services over gRPC; each has its own request
coalescing (coalesce.py) and its own `--max-concurrent-requests`. The embedder merges every
worker's calls into its GPU batches (services/embedder/batching.py).
"""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
from dataclasses import asdict, dataclass, field

import structlog

log = structlog.get_logger(__name__)

_ENV = "TUNEWIRE_HTTP_WORKER_SETTINGS"


@dataclass
class WorkerSettings:
    """What each worker's app needs: the services' addresses and the encoders served."""

    embedder: str
    trainer: str | None = None
    models: dict[str, str] = field(default_factory=dict)
    max_concurrent: int = 512
    served_model: str | None = None  # the artifact answered at /predict (`--model_path`)


def die_with_parent(parent_pid: int | None = None) -> None:
    """Linux: this process gets SIGTERM when its parent dies, so a supervisor killed with
    SIGKILL leaves no worker holding the port. A parent that died before the request was made
    (the worker was still importing) sends nothing: then the worker, re-parented, ends here.
    `parent_pid`: the parent's, where this process was not started by multiprocessing."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent_pid is None and (parent := multiprocessing.parent_process()) is not None:
        parent_pid = parent.pid
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def app_from_env():
    """uvicorn's app factory, in each worker process."""
    from clients.http.app import create_app
    from clients.http.backend import Backend
    from tunewire.logging import configure

    die_with_parent()
    configure()
    settings = WorkerSettings(**json.loads(os.environ[_ENV]))
    backend = Backend(
        settings.embedder, settings.trainer, settings.models, served_model=settings.served_model
    )
    log.info("http worker", pid=os.getpid(), embedder=settings.embedder)
    return create_app(backend, settings.max_concurrent)


def _server_target(config) -> dict:
    """Older uvicorn (0.34) takes each worker's `target` (the server's run); newer ones (0.55)
    build the server in the worker themselves and take no such argument."""
    import inspect

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if "target" in inspect.signature(Multiprocess.__init__).parameters:
        return {"target": uvicorn.Server(config).run}
    return {}


def serve_workers(http_settings, worker: WorkerSettings, workers: int) -> None:
    """Run `workers` front-door processes on `http_settings`' address until SIGTERM/SIGINT
    (blocks; the calling thread must be the main one: the supervisor takes the signals)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from clients.http.server import bind_socket, tls_options

    if workers < 1:
        raise ValueError("workers must be >= 1")
    sock = bind_socket(http_settings)
    os.environ[_ENV] = json.dumps(asdict(worker))
    config = uvicorn.Config(
        "clients.http.workers:app_from_env",
        factory=True,
        workers=workers,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        **tls_options(http_settings),
    )
    scheme = "https" if http_settings.tls_cert is not None else "http"
    log.info("http serving", port=sock.getsockname()[1], scheme=scheme, workers=workers)
    try:
        Multiprocess(config, sockets=[sock], **_server_target(config)).run()
    finally:
        sock.close()
