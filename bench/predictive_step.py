"""The README job's head training loop alone, in-process: CPU milliseconds a step, and a digest of
what it trained (weights and every epoch's losses and metrics), so that two checkouts can be
compared for speed and for bits.

`HeadTrainer.train` on the SMS spam shape (3,386 training rows of 384-d vectors, 484 validation
rows, batch 64, `examples/sms_spam.yaml`'s head: 384 → 128 ReLU, dropout 0.1 → 1, Adam,
clipping at 0.5), the vectors random (one direction per label plus noise: the speed does not
depend on them), 20 epochs without early stopping, on the intra-op threads the loop picks (one).
With `--baseline-root` the same loop of another checkout runs in its own interpreter, the two
alternating; the same digest means the same bits.

    .venv/bin/python bench/predictive_step.py [--rounds 3] [--baseline-root ../main-before]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_here(epochs: int, repeats: int) -> dict:
    """The loop `repeats` times in this interpreter (the first warms up); their results."""
    import numpy as np
    import pandas as pd
    import torch
    import yaml

    from services.trainer.context import JobContext
    from services.trainer.model_types import resolve
    from services.trainer.recipes.predictive.data import prepare
    from services.trainer.recipes.predictive.loop import HeadTrainer
    from services.trainer.recipes.predictive.recipe import build_model
    from tunewire import heads as pm
    from tunewire.config import to_dict

    raw = yaml.safe_load((ROOT / "examples" / "sms_spam.yaml").read_text())
    raw["trainer"].update(epochs=epochs, early_stop=-1)
    cfg = resolve(raw)
    results = []
    for _ in range(repeats):
        rng = np.random.default_rng(0)
        splits = {}
        for name, n in (("train", 3386), ("validation", 484), ("test", 967)):
            labels = rng.choice(["ham", "spam"], size=n, p=[0.87, 0.13])
            splits[name] = pd.DataFrame({"text": [f"t{i}" for i in range(n)], "label": labels})
        tmp = Path(tempfile.mkdtemp(prefix="tunewire-step-"))
        ctx = JobContext(
            "job-step",
            cfg,
            to_dict(cfg),
            tmp / "work",
            tmp / "artifact",
            splits["train"],
            splits["validation"],
            splits["test"],
            emit=lambda event: None,
        )
        data = prepare(cfg, splits)
        for split, df in data.frames.items():
            y = data.y[split]["label"].astype(np.float32)
            v = rng.normal(size=(len(df), 384)).astype(np.float32) * 0.05
            v[:, :8] += y[:, None] * 0.1
            data.x[split]["text"] = v / np.linalg.norm(v, axis=1, keepdims=True)
        refs = pm.encoder_refs(cfg)
        refs["text"].dimension = 384
        torch.manual_seed(0)
        trainer = HeadTrainer(ctx, build_model(cfg, data, refs), data)
        with trainer.cpu_threads():
            cpu, wall = time.process_time(), time.perf_counter()
            trainer.train(123)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        steps = trainer.history[-1]["step"]
        digest = hashlib.sha1()
        for p in trainer.model.parameters():
            digest.update(p.detach().numpy().tobytes())
        digest.update(repr([(h["train_loss"], h["metrics"]) for h in trainer.history]).encode())
        results.append(
            {
                "steps": steps,
                "cpu_ms_per_step": 1000 * cpu / steps,
                "wall_ms_per_step": 1000 * wall / steps,
                "digest": digest.hexdigest()[:16],
            }
        )
    return {"torch": torch.__version__, "runs": results[1:]}


def run_side(root: Path, epochs: int, repeats: int) -> dict:
    """This script's loop on the checkout at `root`, in a fresh interpreter."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2]);"
        "from predictive_step import run_here;"
        "print(json.dumps(run_here(int(sys.argv[3]), int(sys.argv[4]))))"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(root), str(ROOT / "bench"), str(epochs), str(repeats)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=1200,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interpreters per checkout")
    parser.add_argument("--repeats", type=int, default=3, help="loops per interpreter (+1 warm)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--baseline-root", type=Path, default=None)
    args = parser.parse_args()
    sides = {"ours": ROOT}
    if args.baseline_root is not None:
        sides = {"baseline": args.baseline_root.resolve(), **sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}
    digests: dict[str, set[str]] = {side: set() for side in sides}
    loads = []
    for round_ in range(args.rounds):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for side in order:
            loads.append(os.getloadavg()[0])
            result = run_side(sides[side], args.epochs, args.repeats + 1)
            cpu[side] += [r["cpu_ms_per_step"] for r in result["runs"]]
            digests[side] |= {r["digest"] for r in result["runs"]}
            print(
                f"round {round_ + 1} {side}: CPU ms a step "
                f"{[round(r['cpu_ms_per_step'], 3) for r in result['runs']]}, wall "
                f"{[round(r['wall_ms_per_step'], 3) for r in result['runs']]}, "
                f"{result['runs'][0]['steps']} steps, digest {sorted(digests[side])}",
                flush=True,
            )
    print(
        f"\nload as each interpreter started {min(loads):.1f}-{max(loads):.1f}; "
        f"torch {result['torch']}"
    )
    for side in sides:
        print(f"{side}: CPU ms a step, median {statistics.median(cpu[side]):.3f}")
    if "baseline" in sides:
        ratio = statistics.median(cpu["ours"]) / statistics.median(cpu["baseline"])
        same = digests["ours"] == digests["baseline"] and len(digests["ours"]) == 1
        print(f"ours / baseline {ratio:.2f}; the same bits: {same}")


if __name__ == "__main__":
    main()
