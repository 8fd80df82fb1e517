"""The job runner's entry to generative fine-tuning: start the torchrun worker, relay its events.

The trainer service never trains an LLM in its own process: a CUDA OOM, a segfault in a kernel or a
kill -9 must fail one job, not the service. `run_generative_job` writes the job's inputs into
`ctx.work_dir/worker/`, starts `torch.distributed.run` in a process group of its own, tails the
worker's JSON-lines event file into `ctx.emit`, and maps the worker's exit to a result or a domain
error. Cancellation terminates the whole process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import structlog

from services.trainer.context import (
    JobCancelled,
    JobContext,
    JobResult,
    Log,
    MetricValue,
    event_from_dict,
)
from services.trainer.recipes.generative import retrieval
from services.trainer.recipes.generative.events import EventReader
from services.trainer.recipes.generative.reports import RunRecord
from services.trainer.recipes.generative.retrieval import FewShot
from tunewire.config.llm import differences_from_ludwig
from tunewire.errors import FailedPrecondition, Internal, TunewireError
from tunewire.model_card import render_model_card

log = structlog.get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[4]
WORKER_MODULE = "services.trainer.recipes.generative.worker"
POLL_S = 0.2
TERMINATE_GRACE_S = 15.0


def worker_command(job_dir: Path, nproc: int) -> list[str]:
    """The single-node launch; multi-node runs use the same module under a cluster's torchrun."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "-m",
        WORKER_MODULE,
        "--job-dir",
        str(job_dir),
    ]


def write_inputs(ctx: JobContext, job_dir: Path, few_shot: FewShot | None = None) -> None:
    """The worker's inputs; with `few_shot`, each split's rows carry their examples (the
    `__context__` column their prompts place)."""
    inputs = job_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "config.json").write_text(json.dumps(ctx.config_dict))
    (inputs / "job.json").write_text(
        json.dumps(
            {"job_id": ctx.job_id, "attempt": ctx.attempt, "artifact_dir": str(ctx.artifact_dir)}
        )
    )
    for name in ("train", "validation", "test"):
        df = getattr(ctx, name)
        if few_shot is not None:
            df = few_shot.apply(df)
        path = inputs / f"{name}.parquet"
        if df is not None and len(df):
            df.to_parquet(path, index=False)
        else:
            path.unlink(missing_ok=True)


def _check_resources(ctx: JobContext) -> int:
    trainer = ctx.config.backend.trainer
    if trainer.nnodes > 1:
        raise FailedPrecondition(
            f"backend.trainer.nnodes is {trainer.nnodes}: multi-node jobs are started by the "
            f"cluster (k8s Indexed Job / PyTorchJob running `torchrun -m {WORKER_MODULE}`), "
            "not by the trainer service",
            field="backend.trainer.nnodes",
        )
    if trainer.use_gpu:
        import torch

        have = torch.cuda.device_count()
        if have and trainer.num_workers > have:
            raise FailedPrecondition(
                f"backend.trainer.num_workers is {trainer.num_workers} but "
                f"this trainer has {have} GPUs",
                field="backend.trainer.num_workers",
            )
    return trainer.num_workers


def _relay(ctx: JobContext, event: dict) -> dict | None:
    """Forward one worker event to the job's stream; returns it when it ends the run."""
    kind = event.get("event")
    if kind in ("progress", "metrics", "log"):
        ctx.emit(event_from_dict(kind, event))
    elif kind in ("result", "error"):
        return event
    return None


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM the worker's process group (torchrun forwards it to ranks), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_generative_job(ctx: JobContext) -> JobResult:
    """Train `ctx.config` (model_type llm) in a torchrun worker; the artifact lands in
    `ctx.artifact_dir`. Resumes from the job's last checkpoint when one exists."""
    nproc = _check_resources(ctx)
    if ctx.attempt == 1:
        _say_differences(ctx)
    job_dir = ctx.work_dir / "worker"
    few_shot = _few_shot(ctx)
    write_inputs(ctx, job_dir, few_shot)
    events_path = job_dir / "events.jsonl"
    events_path.unlink(missing_ok=True)  # a previous attempt's events were relayed then
    stderr_path = job_dir / f"worker.{ctx.attempt}.log"
    cmd = worker_command(job_dir, nproc)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
        ),
    }
    bound = log.bind(job_id=ctx.job_id, attempt=ctx.attempt, nproc=nproc)
    bound.info("generative worker starting", command=" ".join(cmd))
    reader = EventReader(events_path)
    record = RunRecord()  # for training_statistics.json and the TensorBoard logs
    final: dict | None = None
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=stderr,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                for event in reader.poll():
                    record.add(event)
                    final = _relay(ctx, event) or final
                if proc.poll() is not None:
                    break
                if ctx.cancel_event.is_set():
                    bound.info("cancelling generative worker")
                    _terminate(proc)
                    raise JobCancelled("cancelled by request")
                time.sleep(POLL_S)
        except BaseException:
            if proc.poll() is None:
                _terminate(proc)
            raise
    for event in reader.poll():
        record.add(event)
        final = _relay(ctx, event) or final
    rc = proc.returncode
    bound.info("generative worker exited", returncode=rc)
    if rc == 0 and final is not None and final.get("event") == "result":
        _record_differences(ctx)
        if few_shot is not None:  # predict takes its examples from the same rows
            few_shot.save(ctx.artifact_dir)
        record.write(ctx.artifact_dir, ctx.config.output_features[0].name, final["metrics"])
        if ctx.config.trainer.type != "none":  # a zero-shot artifact is not a model to share
            _write_model_card(ctx.artifact_dir)
        return JobResult(metrics=[MetricValue(**m) for m in final["metrics"]])
    # torchrun exits 1 whatever its worker's code was: the error event says which kind it was.
    message = (final or {}).get("message") or _tail(stderr_path)
    if (final or {}).get("reason") == "failed_precondition":
        raise FailedPrecondition(message)
    raise Internal(f"generative worker failed (exit code {rc}): {message}")


def _few_shot(ctx: JobContext) -> FewShot | None:
    """Ludwig's `prompt.retrieval`, done here rather than in the worker: the embedder client is
    the trainer's, and every rank must see the same examples (see retrieval.py)."""
    try:
        few_shot = retrieval.prepare(
            ctx.config, ctx.train, ctx.embedder, cancelled=ctx.cancel_event.is_set
        )
    except TunewireError:
        ctx.check_cancelled()  # an embedding stream cut short by a cancel is the cancel
        raise
    if few_shot is not None:
        ctx.check_cancelled()
        ctx.emit(Log(few_shot.summary()))
    return few_shot


def _say_differences(ctx: JobContext) -> None:
    """The job's first event: where it differs from Ludwig on purpose, and what validation
    noticed without refusing (once, not per attempt)."""
    notes = differences_from_ludwig(ctx.config) + list(getattr(ctx.config, "warnings", []))
    if notes:
        ctx.emit(Log("differences from Ludwig and warnings: " + "; ".join(notes)))


def _record_differences(ctx: JobContext) -> None:
    """tunewire.json says where the job differs from Ludwig (worked out here, from the config as
    the user wrote it: the worker sees only the resolved one)."""
    meta_path = ctx.artifact_dir / "tunewire.json"
    meta = json.loads(meta_path.read_text())
    meta["differences_from_ludwig"] = differences_from_ludwig(ctx.config)
    meta_path.write_text(json.dumps(meta, indent=2))


# First lines of a rank's death by a signal; torchrun's summary at the end does not say why.
_FATAL_MARKERS = ("Fatal Python error", "terminate called", "what():", "Current thread")


def _tail(path: Path, lines: int = 5) -> str:
    """The worker log's last lines, led by the first lines that say why a rank died."""
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    fatal: list[str] = []
    for i, line in enumerate(text):
        if line.strip().startswith(_FATAL_MARKERS) and len(fatal) < 6:
            # the faulthandler's innermost frames follow its "Current thread" line
            frames = text[i + 1 : i + 3] if line.startswith("Current thread") else []
            fatal += [line.strip(), *(frame.strip() for frame in frames)]
    return " | ".join(fatal + text[-lines:]) or "no output"


def _write_model_card(artifact_dir: Path) -> None:
    """The README.md card (the gateway re-renders it with the repo id on upload)."""
    card = render_model_card(artifact_dir)
    if isinstance(card, str):
        (artifact_dir / "README.md").write_text(card)
