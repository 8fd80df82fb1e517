"""`python -m services.trainer`: run the trainer server until SIGTERM."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tunewire.logging import configure
from tunewire.model_names import add_model_flag, models_from_args
from tunewire.model_roots import add_model_root_flags, roots_from_args
from tunewire.paths import default_data_dir
from tunewire.server_flags import add_security_flags, export_peer_token, security_from_args, serve


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="python -m services.trainer", description="tunewire trainer server"
    )
    env = os.environ.get
    p.add_argument("--host", default=env("TUNEWIRE_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("TUNEWIRE_PORT", "50052")))
    p.add_argument("--data-dir", "--data_dir", type=Path, default=default_data_dir())
    p.add_argument(
        "--embedder",
        default=env("TUNEWIRE_EMBEDDER"),
        help="embedder address HOST:PORT (env TUNEWIRE_EMBEDDER)",
    )
    p.add_argument(
        "--hub-gateway",
        "--hub_gateway",
        default=env("TUNEWIRE_HUB_GATEWAY"),
        help="hub_gateway address HOST:PORT (env TUNEWIRE_HUB_GATEWAY)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(env("TUNEWIRE_TRAINER_WORKERS", "1")),
        help="jobs run at once",
    )
    add_model_root_flags(p, help_extra="; jobs and Predict read models under these")
    p.add_argument(
        "--max-dataset-bytes",
        "--max_dataset_bytes",
        type=int,
        default=int(env("TUNEWIRE_MAX_DATASET_BYTES", str(2 * 1024**3))),
        help="largest data set upload; beyond it RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--max-dataset-memory-bytes",
        "--max_dataset_memory_bytes",
        type=int,
        default=int(env("TUNEWIRE_MAX_DATASET_MEMORY_BYTES", str(512 * 1024**2))),
        help="largest data set parsed in memory; beyond it RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--dataset-cache-bytes",
        "--dataset_cache_bytes",
        type=int,
        default=int(env("TUNEWIRE_DATASET_CACHE_BYTES", str(512 * 1024**2))),
        help="memory for parsed data sets kept between jobs (least recently used evicted)",
    )
    p.add_argument(
        "--max-job-seconds",
        "--max_job_seconds",
        type=float,
        default=float(env("TUNEWIRE_MAX_JOB_SECONDS", "0")),
        help="wall-clock limit of a job, counted from its first start (0: none)",
    )
    p.add_argument(
        "--max-queued-jobs",
        "--max_queued_jobs",
        type=int,
        default=int(env("TUNEWIRE_MAX_QUEUED_JOBS", "0")),
        help="jobs waiting to run before CreateJob is RESOURCE_EXHAUSTED (0: no cap)",
    )
    p.add_argument(
        "--max-events-per-job",
        "--max_events_per_job",
        type=int,
        default=int(env("TUNEWIRE_MAX_EVENTS_PER_JOB", "100000")),
        help="events a job records besides its state changes; later ones are not recorded",
    )
    p.add_argument(
        "--dataset-ttl-seconds",
        "--dataset_ttl_seconds",
        type=float,
        default=float(env("TUNEWIRE_DATASET_TTL_SECONDS", str(7 * 24 * 3600))),
        help="a data set no job references is deleted after this long unused (0: never)",
    )
    p.add_argument(
        "--max-unreferenced-dataset-bytes",
        "--max_unreferenced_dataset_bytes",
        type=int,
        default=int(env("TUNEWIRE_MAX_UNREFERENCED_DATASET_BYTES", str(10 * 1024**3))),
        help="bytes of data sets no job references kept; beyond it the least recently used "
        "go (0: no cap)",
    )
    add_model_flag(p)
    add_security_flags(p, calls_peers=True)
    return p


def settings_from_args(args: argparse.Namespace):
    from services.trainer.app import Settings

    return Settings(
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        embedder=args.embedder,
        hub_gateway=args.hub_gateway,
        workers=args.workers,
        model_roots=roots_from_args(args, args.data_dir),
        hub_models=args.hub_models,
        max_dataset_bytes=args.max_dataset_bytes,
        max_dataset_memory_bytes=args.max_dataset_memory_bytes,
        dataset_cache_bytes=args.dataset_cache_bytes,
        max_job_seconds=args.max_job_seconds,
        max_queued_jobs=args.max_queued_jobs,
        max_events_per_job=args.max_events_per_job,
        models=models_from_args(args),
        dataset_ttl_seconds=args.dataset_ttl_seconds,
        max_unreferenced_dataset_bytes=args.max_unreferenced_dataset_bytes,
        security=security_from_args(args),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure()
    export_peer_token(args)
    from services.trainer.app import start

    return serve("trainer", args, start, settings_from_args(args), lambda app: app.close())


if __name__ == "__main__":
    sys.exit(main())
