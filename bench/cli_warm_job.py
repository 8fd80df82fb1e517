"""The everyday case from the CLI: the README's job (`examples/sms_spam.yaml` on
`.data/examples/sms_spam.csv`) cold, then again on the warm cache, end to end as a user runs it.

Rows, each a fresh `clients/cli.py train ... --json -q` process, timed from its start to its exit:
  embedded, cold:  services started in the CLI's process on a new `--data_dir` (the encoder runs)
  embedded, warm:  the same command again on the same `--data_dir` (every text cached)
  served, warm:    against a trainer already running (`clients/cli.py serve all`, whose cache a
                   first job filled), `--trainer HOST:PORT`
Every run must be a real job: its own id, SUCCEEDED, trained (its metrics present).

    .venv/bin/python bench/cli_warm_job.py [--runs 3]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "sms_spam.yaml"
DATASET = ROOT / ".data" / "examples" / "sms_spam.csv"


def train(extra: list[str], env: dict) -> tuple[float, dict]:
    """Seconds for one CLI train to exit, and its JSON summary (checked: SUCCEEDED, metrics)."""
    cmd = [sys.executable, str(ROOT / "clients" / "cli.py"), "train", "-c", str(CONFIG)]
    cmd += ["--dataset", str(DATASET), "--json", "-q", *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"train failed ({proc.returncode}): {proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["state"] == "SUCCEEDED", summary
    assert summary["metrics"].get("test"), f"no test metrics: {summary}"
    return elapsed, summary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"no server on port {port} after {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="warm runs per row (median)")
    args = parser.parse_args()
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "HF_HUB_OFFLINE": "1"}
    ids: set[str] = set()

    def record(summary: dict) -> None:
        assert summary["job_id"] not in ids, f"job id {summary['job_id']} seen twice"
        ids.add(summary["job_id"])

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "embedded"
        cold, summary = train(["--data_dir", str(data_dir)], env)
        record(summary)
        warm = []
        for _ in range(args.runs):
            seconds, summary = train(["--data_dir", str(data_dir)], env)
            record(summary)
            warm.append(seconds)

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "clients" / "cli.py"), "serve", "all"]
            + ["--port", str(port), "--data_dir", str(Path(tmp) / "served")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_serving(port + 1)
            address = ["--trainer", f"127.0.0.1:{port + 1}"]
            served_cold, summary = train(address, env)  # fills the served embedder's cache
            record(summary)
            served = []
            for _ in range(args.runs):
                seconds, summary = train(address, env)
                record(summary)
                served.append(seconds)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)

    warm_s, served_s = statistics.median(warm), statistics.median(served)
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average at end "
        f"{os.getloadavg()[0]:.1f}; python {platform.python_version()}"
    )
    print(f"job: {CONFIG.relative_to(ROOT)} on {DATASET.relative_to(ROOT)}; {len(ids)} jobs")
    print()
    print("| run | seconds (median of warm runs) | vs cold | target |")
    print("|---|---:|---:|---|")
    print(f"| embedded, cold (new --data_dir) | {cold:.2f} | 1.00 | |")
    print(
        f"| embedded, warm (same --data_dir), {args.runs} runs | {warm_s:.2f} | "
        f"{warm_s / cold:.2f} | <= 0.10 of cold or <= 3 s |"
    )
    print(f"| served, first job (cold cache) | {served_cold:.2f} | {served_cold / cold:.2f} | |")
    print(f"| served, warm, {args.runs} runs | {served_s:.2f} | {served_s / cold:.2f} | <= 1.5 s |")
    print(f"\nwarm runs: {[round(s, 2) for s in warm]}; served: {[round(s, 2) for s in served]}")


if __name__ == "__main__":
    main()
