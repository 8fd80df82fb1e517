"""Services run the way they run in production: `python -m services.<name>` subprocesses on
127.0.0.1, JSON logs to a file (so tests can search them), health-checked before use."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    port: int
    popen: subprocess.Popen
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or closed."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def memory(pid: int) -> tuple[int, int]:
    """(resident, peak resident) bytes of process `pid`: VmRSS and VmHWM from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


class PeakRSS:
    """The highest resident memory of process `pid` while the `with` block runs, sampled from
    /proc every few milliseconds (VmHWM cannot tell a request's peak from an earlier one)."""

    def __init__(self, pid: int, every_s: float = 0.003) -> None:
        self.pid, self.every_s = pid, every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, memory(self.pid)[0])
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self.peak = memory(self.pid)[0]
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, memory(self.pid)[0])


# glibc gives freed memory back at once (large blocks mapped, the heap trimmed), so resident
# memory follows what a process holds, not what it once held: for measuring a request's peak.
TIGHT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def start(
    service: str,
    args: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    port: int | None = None,
    timeout: float = 90.0,
    root: Path = ROOT,
) -> Proc:
    """Start a service and wait until its health is SERVING (or fail with its log). `root`:
    the source tree to run it from (a benchmark's baseline runs an older checkout)."""
    port = port or free_port()
    full_env = {**os.environ, "TUNEWIRE_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **(env or {})}
    fh = open(log, "ab")
    popen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            f"services.{service}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        cwd=root,
        env=full_env,
        stdout=fh,
        stderr=subprocess.STDOUT,
    )
    fh.close()
    proc = Proc(service, port, popen, log)
    channel = grpc.insecure_channel(proc.address)
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if popen.poll() is not None:
                raise RuntimeError(
                    f"{service} exited {popen.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return proc
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"{service} not SERVING after {timeout}s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
    finally:
        channel.close()
