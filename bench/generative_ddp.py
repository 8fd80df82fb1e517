"""The generative recipe on two GPUs: DDP and FSDP2 (torchrun, one node) and the multi-node launch
path (two torchrun launches of one GPU each with c10d rendezvous, as two nodes would run), each
against one GPU at the same global batch: per-step loss match and tokens/s ratio.

Each GPU runs the same micro-batch as the single GPU (`--per-gpu-batch`), and the single GPU
reaches the two-GPU global batch by accumulating two micro-batches: the usual data-parallel
scaling measurement (weak scaling). `--one-gpu-whole-batch` instead runs the single GPU on the
whole global batch at once, so each of two GPUs gets half the micro-batch it had alone (strong
scaling), which charges the smaller per-GPU GEMMs to the distributed runs.

Every run is the real worker (`-m services.trainer.recipes.generative.worker`) on a job directory;
losses and throughput come from its events.jsonl.

    python bench/generative_ddp.py [--tiny] [--steps N] [--per-gpu-batch B] [--one-gpu-whole-batch]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generative_setup import LLAMA_1B, TINY, build_model_dir, llm_config, token_frame, write_job  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKER = ["-m", "services.trainer.recipes.generative.worker", "--job-dir"]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def launch(cmds: list[tuple[list[str], dict]], log: Path) -> None:
    """Start the commands together (a multi-node run needs both launches at once); wait for all."""
    procs = []
    with log.open("w") as fh:
        for cmd, env in cmds:
            procs.append(
                subprocess.Popen(
                    cmd, cwd=REPO, env={**os.environ, **env}, stdout=fh, stderr=subprocess.STDOUT
                )
            )
        codes = [p.wait(timeout=900) for p in procs]
    if any(codes):
        raise RuntimeError(
            f"exit codes {codes}; log tail:\n" + "\n".join(log.read_text().splitlines()[-25:])
        )


def read_events(job_dir: Path, skip: int) -> dict:
    events = [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]
    errors = [e for e in events if e["event"] == "error"]
    if errors:
        raise RuntimeError(errors[0]["message"])
    progress = [e for e in events if e["event"] == "progress"]
    return {
        "losses": [e["loss"] for e in progress],
        "tok_s": statistics.median(e["throughput"] for e in progress[skip:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="CPU run with a tiny model (gloo)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--work", type=Path, default=Path("/tmp/genddp-work"))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/genddp")))
    parser.add_argument("--adapter", action="store_true", help="LoRA instead of full fine-tuning")
    parser.add_argument("--only", default="", help="comma-separated run names")
    parser.add_argument(
        "--per-gpu-batch",
        type=int,
        default=0,
        help="rows of 1024 tokens per GPU and micro-batch (default 16; 2 with --tiny)",
    )
    parser.add_argument(
        "--one-gpu-whole-batch",
        action="store_true",
        help="the single GPU runs the global batch in one micro-batch (strong scaling)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shape, seq, per_gpu = (TINY, 128, 2) if args.tiny else (LLAMA_1B, 1024, 16)
    per_gpu = args.per_gpu_batch or per_gpu
    one = (
        dict(batch=2 * per_gpu, accumulation=1)
        if args.one_gpu_whole_batch
        else dict(batch=per_gpu, accumulation=2)
    )
    model_dir = build_model_dir(args.work / "model", shape, "cpu" if args.tiny else "cuda")
    df = token_frame(2 * per_gpu * args.steps, (seq, seq), shape["vocab_size"], seed=3)
    adapter = (
        {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
        if args.adapter
        else None
    )
    use_gpu = not args.tiny
    runs = {
        "1 GPU": dict(workers=1, nnodes=1, strategy="ddp", **one),
        "2 GPUs DDP": dict(workers=2, nnodes=1, batch=per_gpu, strategy="ddp"),
        "2 GPUs FSDP2": dict(workers=2, nnodes=1, batch=per_gpu, strategy="fsdp"),
        "2 GPUs FSDP2 (reshard_after_forward false)": dict(
            workers=2, nnodes=1, batch=per_gpu, strategy="fsdp", reshard=False
        ),
        "2 nodes x 1 GPU (c10d)": dict(workers=1, nnodes=2, batch=per_gpu, strategy="ddp"),
    }
    results = {}
    for name, r in runs.items():
        if args.only and name not in args.only.split(","):
            continue
        job_dir = args.work / name.replace(" ", "_").replace("(", "").replace(")", "")
        cfg = llm_config(
            model_dir,
            adapter=adapter,
            batch_size=r["batch"],
            packing=True,
            steps=args.steps,
            workers=r["workers"],
            nnodes=r["nnodes"],
            strategy=r["strategy"],
            max_len=seq,
            accumulation=r.get("accumulation", 1),
        )
        cfg["backend"]["trainer"]["use_gpu"] = use_gpu
        cfg["backend"]["trainer"]["reshard_after_forward"] = r.get("reshard", True)
        write_job(job_dir, cfg, df, name)
        (job_dir / "events.jsonl").unlink(missing_ok=True)
        job = str(job_dir)
        if r["nnodes"] == 1:
            cmds = [
                (
                    torchrun(
                        "--standalone",
                        "--nnodes",
                        "1",
                        "--nproc_per_node",
                        str(r["workers"]),
                        *WORKER,
                        job,
                    ),
                    {},
                )
            ]
        else:
            cmds = [
                (
                    torchrun(
                        "--nnodes",
                        "2",
                        "--nproc_per_node",
                        "1",
                        "--rdzv_backend",
                        "c10d",
                        "--rdzv_endpoint",
                        "127.0.0.1:29400",
                        "--rdzv_id",
                        "tunewire-bench",
                        "--node_rank",
                        str(rank),
                        *WORKER,
                        job,
                    ),
                    {"CUDA_VISIBLE_DEVICES": str(rank)} if use_gpu else {},
                )
                for rank in (0, 1)
            ]
        started = time.time()
        try:
            launch(cmds, args.out / f"{job_dir.name}.log")
            results[name] = read_events(job_dir, skip=3)
            print(
                f"{name}: {time.time() - started:.0f}s, losses {results[name]['losses']}",
                flush=True,
            )
        except Exception as exc:
            print(f"{name}: FAILED {exc}", flush=True)
    report = table(results)
    print(report)
    (args.out / "generative_ddp.md").write_text(report)


def table(results: dict) -> str:
    ref = results.get("1 GPU")
    lines = [
        "| run | tokens/s (median) | vs 1 GPU | max abs loss diff vs 1 GPU | max rel diff"
        " | final loss |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if ref is None:
            continue
        diffs = [abs(a - b) for a, b in zip(r["losses"], ref["losses"])]
        rel = [abs(a - b) / abs(b) for a, b in zip(r["losses"], ref["losses"])]
        lines.append(
            f"| {name} | {r['tok_s']:,.0f} | {r['tok_s'] / ref['tok_s']:.2f}x | "
            f"{max(diffs):.4f} | {100 * max(rel):.2f}% | {r['losses'][-1]:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
