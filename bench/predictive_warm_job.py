"""The trainer's side of predictive_headline's (c), the warm-cache job, at the H200 run's shapes
(20,000 texts, 2,048-wide vectors, 10 epochs of batch 64) on any machine, in seconds.

Everything in (c) except gRPC and the cache read: the job goes through the trainer's own
`JobRunner` (data set read, splits, `prepare`, the head's loop, evaluation, artifact, plots,
model card), but the embedder is a stub that hands back vectors computed before the clock starts.
On the H200 the cache read itself took 0.79 s (predictive_headline_h200.md); this measures what
the trainer adds to it, and `--profile` says where that goes.

    .venv/bin/python bench/predictive_warm_job.py --n-texts 20000 --dim 2048 --runs 2
    .venv/bin/python bench/predictive_warm_job.py --profile /tmp/warm.prof   # then pstats
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from predictive_headline import job_config, mixed_texts  # noqa: E402

from clients.sdk import EmbedResult  # noqa: E402
from services.trainer.admission import Admission  # noqa: E402
from services.trainer.datasets import DatasetStore  # noqa: E402
from services.trainer.job_store import SUCCEEDED, JobStore  # noqa: E402
from services.trainer.runner import JobRunner  # noqa: E402


class WarmCache:
    """An embedder whose every text is a cache hit: the vectors are made up front, one random
    cluster per label plus noise, so the head has something to learn."""

    def __init__(self, texts: list[str], labels: list[str], dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        names = sorted(set(labels))
        centres = rng.normal(size=(len(names), dim)).astype(np.float32)
        which = np.array([names.index(label) for label in labels])
        vectors = centres[which] * 0.02 + rng.normal(size=(len(texts), dim)).astype(np.float32)
        self.index = {t: i for i, t in enumerate(texts)}
        self.vectors = vectors

    def info(self, spec) -> SimpleNamespace:
        """Admission's check that the job's encoder loads (`encoder_check.py`): it does."""
        return SimpleNamespace(fingerprint="warm-cache-stub", dimension=self.vectors.shape[1])

    def embed_many(self, texts, spec, progress=None, cancelled=None) -> EmbedResult:
        rows = self.vectors[[self.index[t] for t in texts]]
        if progress is not None:
            progress(len(texts), len(texts))
        return EmbedResult(rows, len(texts), 0, "warm-cache-stub")


def run_job(
    runner: JobRunner, store: JobStore, cfg: dict, dataset_id: str
) -> tuple[float, float, float]:
    """Submit and run it here, in this thread (so that cProfile sees it; the service runs it
    on a worker thread); returns (seconds, CPU seconds of the process, test accuracy). On a
    shared machine the CPU seconds move less with the load than the wall time."""
    started, cpu = time.perf_counter(), time.process_time()
    job = runner.submit(cfg, dataset_id=dataset_id)
    runner._run(job.id)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    rec = store.get(job.id)
    if rec.state != SUCCEEDED:
        raise SystemExit(f"job {job.id} {rec.state}: {rec.error}")
    accuracy = next(
        m["value"]
        for m in rec.metrics
        if (m["split"], m["feature"], m["name"]) == ("test", "label", "accuracy")
    )
    return seconds, cpu, accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-texts", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--runs", type=int, default=2, help="jobs in a row (the first warms up)")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (0: torch's default); 1 is steadier on a shared machine",
    )
    ap.add_argument("--profile", type=Path, default=None, help="cProfile the last job to here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    df = mixed_texts(args.n_texts)
    work = Path(tempfile.mkdtemp(prefix="tunewire-warm-job-"))
    datasets = DatasetStore(work / "datasets")
    store = JobStore(work / "jobs")
    embedder = WarmCache(list(df["text"]), list(df["label"]), args.dim)
    runner = JobRunner(
        store,
        Admission(datasets, lambda: embedder),
        work / "artifacts",
        embedder_factory=lambda: embedder,
    )
    ds = datasets.put([df.to_csv(index=False).encode()], "warm.csv")
    args.random_llama_1b, args.pooling, args.max_length = True, "last", 128
    cfg = job_config("stub-encoder", args)
    print(
        f"{len(df)} texts, {args.dim}-wide vectors, {args.epochs} epochs, batch "
        f"{args.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for run in range(1, args.runs + 1):
        profiler = cProfile.Profile() if args.profile and run == args.runs else None
        if profiler is not None:
            profiler.enable()
        seconds, cpu, accuracy = run_job(runner, store, cfg, ds.id)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        print(f"job {run}: {seconds:.2f} s ({cpu:.2f} CPU s), test accuracy {accuracy:.3f}")
    if args.profile:
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
