"""The everyday case from the CLI: the README's job (`examples/sms_spam.yaml` on
`.data/examples/sms_spam.csv`) cold, then again on the warm cache, end to end as a user runs it.

Rows, each a fresh `clients/cli.py train ... --json -q` process, timed from its start to its exit:
  embedded, cold:  services started in the CLI's process on a new `--data_dir` (the encoder runs)
  embedded, warm:  the same command again on the same `--data_dir` (every text cached)
  served, warm:    against a trainer already running (`clients/cli.py serve all`, whose cache a
                   first job filled), `--trainer HOST:PORT`
Every run must be a real job: its own id, SUCCEEDED, trained (its metrics present).
With `--baseline-root` another checkout (main before a change) runs the same rows, its warm runs
alternating with this checkout's, and the per-round ratios are printed.

Beside the seconds to exit, each warm run's CPU seconds (user + system): the CLI process and the
children it waited for (the plot worker), plus, against a running trainer, what the server's
processes (its plot worker included) spent meanwhile. On a machine shared with other work the
wall time moves with their load; the CPU a run needs moves much less.

    .venv/bin/python bench/cli_warm_job.py [--runs 3] [--baseline-root ../main-before]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
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
LOADS: list[float] = []  # the 1-minute load average as each run starts (a shared machine)


def children_cpu() -> float:
    """CPU seconds of this process's children that were waited for (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def group_cpu(pgid: int | None) -> float:
    """CPU seconds the live processes of process group `pgid` (a server started in its own
    session, its plot worker with it) have spent so far; 0 without one."""
    if pgid is None:
        return 0.0
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        if int(fields[2]) == pgid:  # fields from the state on: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def train(
    root: Path, extra: list[str], server_pgid: int | None = None
) -> tuple[float, float, dict]:
    """Seconds for one CLI train of the checkout at `root` to exit, the CPU seconds it took
    (the server's group's too, when given), and its JSON summary (checked: SUCCEEDED,
    metrics)."""
    cmd = [sys.executable, str(root / "clients" / "cli.py"), "train", "-c", str(CONFIG)]
    cmd += ["--dataset", str(DATASET), "--json", "-q", *extra]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    LOADS.append(os.getloadavg()[0])
    cpu_before = children_cpu() + group_cpu(server_pgid)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, cwd=root)
    elapsed = time.perf_counter() - started
    cpu = children_cpu() + group_cpu(server_pgid) - cpu_before
    if proc.returncode != 0:
        raise RuntimeError(f"train failed ({proc.returncode}): {proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["state"] == "SUCCEEDED", summary
    assert summary["metrics"].get("test"), f"no test metrics: {summary}"
    return elapsed, cpu, summary


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


def serve(root: Path, data_dir: Path) -> tuple[subprocess.Popen, list[str]]:
    """`clients/cli.py serve all` of the checkout at `root`, and the flag that reaches it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(root / "clients" / "cli.py"), "serve", "all"]
        + ["--port", str(port), "--data_dir", str(data_dir)],
        env={**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"},
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_serving(port + 1)
    return server, ["--trainer", f"127.0.0.1:{port + 1}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="warm runs per row (median)")
    parser.add_argument(
        "--baseline-root",
        type=Path,
        default=None,
        help="another checkout (e.g. main before a change) run the same way, its warm runs "
        "alternating with this one's; its config and data set are this checkout's",
    )
    args = parser.parse_args()
    sides = {"ours": ROOT}
    if args.baseline_root is not None:
        sides = {"baseline": args.baseline_root.resolve(), **sides}
    ids: set[str] = set()

    def record(summary: dict) -> None:
        assert summary["job_id"] not in ids, f"job id {summary['job_id']} seen twice"
        ids.add(summary["job_id"])

    cold: dict[str, float] = {}
    served_cold: dict[str, float] = {}
    warm: dict[str, list[float]] = {side: [] for side in sides}
    served: dict[str, list[float]] = {side: [] for side in sides}
    warm_cpu: dict[str, list[float]] = {side: [] for side in sides}
    served_cpu: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, tuple[subprocess.Popen, list[str]]] = {}
        try:
            for side, root in sides.items():
                data_dir = ["--data_dir", str(Path(tmp) / side / "embedded")]
                cold[side], _, summary = train(root, data_dir)
                record(summary)
                servers[side] = serve(root, Path(tmp) / side / "served")
                # fills the served embedder's cache
                served_cold[side], _, summary = train(root, servers[side][1])
                record(summary)
            # Warm runs alternate between the checkouts (the order flips each round), so that
            # a load that comes and goes on a shared machine falls on both.
            for run in range(args.runs):
                order = list(sides) if run % 2 == 0 else list(reversed(sides))
                for side in order:
                    server, flags = servers[side]
                    seconds, cpu, summary = train(sides[side], flags, server.pid)
                    record(summary)
                    served[side].append(seconds)
                    served_cpu[side].append(cpu)
                for side in order:
                    data_dir = ["--data_dir", str(Path(tmp) / side / "embedded")]
                    seconds, cpu, summary = train(sides[side], data_dir)
                    record(summary)
                    warm[side].append(seconds)
                    warm_cpu[side].append(cpu)
        finally:
            for server, _ in servers.values():
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(30)

    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average as runs started "
        f"{min(LOADS):.1f}-{max(LOADS):.1f} (median {statistics.median(LOADS):.1f}); "
        f"python {platform.python_version()}"
    )
    print(f"job: {CONFIG.relative_to(ROOT)} on {DATASET.relative_to(ROOT)}; {len(ids)} jobs")
    print()
    print("| checkout | run | seconds (median of warm runs) | vs cold | CPU s (median) | target |")
    print("|---|---|---:|---:|---:|---|")
    for side in sides:
        warm_s, served_s = statistics.median(warm[side]), statistics.median(served[side])
        warm_c, served_c = statistics.median(warm_cpu[side]), statistics.median(served_cpu[side])
        print(f"| {side} | embedded, cold (new --data_dir) | {cold[side]:.2f} | 1.00 | | |")
        print(
            f"| {side} | embedded, warm (same --data_dir), {args.runs} runs | {warm_s:.2f} | "
            f"{warm_s / cold[side]:.2f} | {warm_c:.2f} | <= 0.10 of cold or <= 3 s |"
        )
        print(
            f"| {side} | served, first job (cold cache) | {served_cold[side]:.2f} | "
            f"{served_cold[side] / cold[side]:.2f} | | |"
        )
        print(
            f"| {side} | served, warm, {args.runs} runs | {served_s:.2f} | "
            f"{served_s / cold[side]:.2f} | {served_c:.2f} | <= 1.5 s |"
        )
    for side in sides:
        print(
            f"\n{side}: warm runs {[round(s, 2) for s in warm[side]]} "
            f"(CPU {[round(c, 2) for c in warm_cpu[side]]}); "
            f"served {[round(s, 2) for s in served[side]]} "
            f"(CPU {[round(c, 2) for c in served_cpu[side]]})"
        )
    if "baseline" in sides:
        for name, runs, cpus in (
            ("embedded, warm", warm, warm_cpu),
            ("served, warm", served, served_cpu),
        ):
            ratios = [o / b for b, o in zip(runs["baseline"], runs["ours"], strict=True)]
            cpu_ratios = [o / b for b, o in zip(cpus["baseline"], cpus["ours"], strict=True)]
            print(
                f"{name}: ours / baseline per round {[round(r, 2) for r in ratios]}, "
                f"median {statistics.median(ratios):.2f}; CPU per round "
                f"{[round(r, 2) for r in cpu_ratios]}, median {statistics.median(cpu_ratios):.2f}"
            )


if __name__ == "__main__":
    main()
