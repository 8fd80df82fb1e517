"""The torchrun worker of a generative job:

    python -m torch.distributed.run --nproc_per_node N \
        -m services.trainer.recipes.generative.worker --job-dir DIR

Reads `DIR/inputs/` (config.json, job.json, the splits as parquet) written by `launch.py`, trains,
and writes `DIR/events.jsonl` (rank 0), checkpoints under `DIR/checkpoints/` and the artifact.
A process of its own, so a crash or OOM fails the job and not the trainer service. Imports no
service code (grpc servers, structlog, lmdb): it runs on bare GPU nodes too.
Exit codes: 0 done, 3 failed precondition (the job cannot run as configured), 1 anything else.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from services.trainer.recipes.generative.errors import PreconditionError
from services.trainer.recipes.generative.events import EventWriter
from services.trainer.recipes.generative.recipe import GenerativeRecipe, WorkerJob
from services.trainer.recipes.generative.zero_shot import ZeroShotRecipe
from tunewire.config.llm import load_resolved_llm

EXIT_PRECONDITION = 3


def _init_distributed(use_gpu: bool) -> torch.device:
    """One process group for every run (world 1 included), so one code path serves all."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_gpu and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
    dist.init_process_group(
        backend, timeout=timedelta(minutes=30), device_id=device if device.type == "cuda" else None
    )
    return device


def load_job(job_dir: Path) -> WorkerJob:
    """The job as the launcher wrote it. Its config was validated and resolved once, at
    admission; it is rebuilt here, not validated again."""
    inputs = job_dir / "inputs"
    config_dict = json.loads((inputs / "config.json").read_text())
    meta = json.loads((inputs / "job.json").read_text())
    return WorkerJob(
        job_id=meta["job_id"],
        job_dir=job_dir,
        artifact_dir=Path(meta["artifact_dir"]),
        attempt=int(meta.get("attempt", 1)),
        cfg=load_resolved_llm(config_dict),
        config_dict=config_dict,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    # A rank killed by a signal (SIGABRT from a C++ terminate, SIGSEGV) prints its threads'
    # Python stacks to the worker log, which the launcher's error message quotes.
    faulthandler.enable()
    job = load_job(args.job_dir)
    device = _init_distributed(job.cfg.backend.trainer.use_gpu)
    rank = dist.get_rank()
    events = EventWriter(args.job_dir / "events.jsonl", enabled=rank == 0)
    code = 0
    try:
        events.log(
            f"worker started: rank 0 of {dist.get_world_size()} on {device}, "
            f"torch {torch.__version__}"
        )
        zero_shot = job.cfg.trainer.type == "none"
        recipe = (ZeroShotRecipe if zero_shot else GenerativeRecipe)(job, events, device)
        recipe.setup()
        recipe.train()
        metrics = recipe.final_evaluation()
        recipe.save_artifact()
        events.write("result", metrics=metrics, steps=recipe.step, losses=recipe.losses)
        recipe.cleanup()
        dist.barrier()  # ranks > 0 wait while rank 0 writes the artifact
    except PreconditionError as exc:
        events.write("error", reason="failed_precondition", message=str(exc))
        code = EXIT_PRECONDITION
    except Exception as exc:  # the launcher turns this into INTERNAL with the message
        message = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, torch.OutOfMemoryError):
            message = f"out of GPU memory: {exc}".split("\n")[0]
        events.write("error", reason="internal", message=message, traceback=traceback.format_exc())
        traceback.print_exc()
        code = 1
    finally:
        events.close()
        if dist.is_initialized():
            dist.destroy_process_group()
    return code


def exit_now(code: int) -> None:
    """End the rank without the interpreter's teardown: once the process group is destroyed and
    the events closed there is nothing left to do, and a teardown that kills a thread inside
    C++ code aborts the rank (SIGABRT, 'terminate called without an active exception'),
    which fails a job that has finished."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
