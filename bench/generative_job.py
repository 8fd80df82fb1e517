"""No loss between the bench and a real job: a generative job submitted through the CLI (embedded
services, one `--data_dir`: upload, data loading, tokenisation, packing, the worker process,
events, the artifact) against `bench/generative_train.py`'s in-process step for the same shape.

Both train the same model on the same rows with the same pinned config (generative_setup's
`llm_config`). The job's tokens/s is the median of its per-step progress events after the
warm-up steps (what the trainer reports while it trains); the bench's is its timed steps' mean.
Also printed: the whole job's wall time from the CLI's start, and its tokens over that time.

    python bench/generative_job.py               # GPU: Llama-3.2-1B shape, 8x1024, LoRA, compiled
    python bench/generative_job.py --tiny        # CPU: the test-sized version of the comparison
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generative_setup import LLAMA_1B, TINY, build_model_dir, llm_config, token_frame  # noqa: E402

WARMUP = 3


def job_events(data_dir: Path, job_id: str) -> list[dict]:
    paths = list(data_dir.rglob(f"{job_id}/events.jsonl"))
    if len(paths) != 1:
        raise RuntimeError(f"expected one events.jsonl for job {job_id}, found {paths}")
    return [json.loads(line) for line in paths[0].read_text().splitlines() if line.strip()]


def run_job(config: dict, csv: Path, data_dir: Path, env: dict) -> dict:
    """Train through the CLI; the job's id, state, per-step tokens/s and wall time."""
    cfg_path = data_dir.parent / "job_config.json"
    cfg_path.write_text(json.dumps(config))
    cmd = [
        sys.executable,
        str(ROOT / "clients" / "cli.py"),
        "train",
        "-c",
        str(cfg_path),
        "--training_set",
        str(csv),
        "--data_dir",
        str(data_dir),
        "--json",
        "-q",
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - started
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the job failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    summary = json.loads(lines[-1])
    progress = [
        e["data"]
        for e in job_events(data_dir, summary["job_id"])
        if e.get("kind") == "progress" and e["data"].get("phase") == "train"
    ]
    steady = [p["throughput"] for p in progress if p["step"] > WARMUP]
    return {
        "job_id": summary["job_id"],
        "state": summary["state"],
        "steps": len(progress),
        "tok_s": statistics.median(steady),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, a tiny model")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--eager", action="store_true", help="trainer.compile: false")
    parser.add_argument("--liger", action="store_true", help="trainer.use_liger_kernel: true")
    parser.add_argument("--batch", type=int, default=0, help="rows per step (8; tiny: 2)")
    parser.add_argument("--steps", type=int, default=13)
    parser.add_argument("--work", type=Path, default=Path("/tmp/genjob-work"))
    args = parser.parse_args()

    import torch
    from generative_train import LORA, _init_process_group, run_ours

    device = torch.device("cpu" if args.tiny else "cuda")
    shape, seq = (TINY, 128) if args.tiny else (LLAMA_1B, 1024)
    batch = args.batch or (2 if args.tiny else 8)
    compile_ = not args.eager and not args.tiny
    adapter = None if args.full else LORA
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = build_model_dir(args.work / "model", shape, device.type)
    frame = token_frame(batch * (args.steps + 2), (seq, seq), shape["vocab_size"], seed=1)
    csv = args.work / "train.csv"
    frame.to_csv(csv, index=False)
    config = llm_config(
        model_dir,
        adapter=adapter,
        batch_size=batch,
        packing=True,
        steps=args.steps,
        compile=compile_,
        liger=args.liger,
    )
    data_dir = args.work / f"data-{time.time_ns()}"
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    job = run_job(config, csv, data_dir, env)
    print(f"job: {job}", flush=True)

    _init_process_group(device)
    bench = run_ours(
        "bench",
        model_dir,
        args.work,
        device,
        frame,
        adapter=adapter,
        batch=batch,
        packing=True,
        compile=compile_,
        liger=args.liger,
        warmup=WARMUP,
        steps=args.steps - WARMUP,
    )
    print(f"bench: {bench}", flush=True)
    tokens = batch * seq * args.steps
    kind = ("full" if args.full else "LoRA r16") + (", compiled" if compile_ else ", eager")
    print()
    print(f"| path ({kind}, {batch}x{seq}) | tokens/s | vs bench |")
    print("|---|---:|---:|")
    print(f"| bench: the recipe's step in process | {bench['tok_s']:,.0f} | 1.00 |")
    print(
        f"| job through the CLI: median step after {WARMUP} warm-up (job {job['job_id']}, "
        f"{job['state']}, {job['steps']} steps) | {job['tok_s']:,.0f} | "
        f"{job['tok_s'] / bench['tok_s']:.2f} |"
    )
    print(
        f"| job through the CLI: all {tokens:,} tokens over its {job['wall_s']:.1f} s wall "
        f"time (start, load, compile included) | {tokens / job['wall_s']:,.0f} | "
        f"{tokens / job['wall_s'] / bench['tok_s']:.2f} |"
    )


if __name__ == "__main__":
    main()
