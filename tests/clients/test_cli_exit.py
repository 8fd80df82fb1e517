"""The CLI program's exit skips the interpreter's teardown only when nothing is left to wait
for: its exit handlers still run, its output is all written, its exit code is kept, and a
thread that is not a daemon is still waited for."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import atexit, sys, threading, time
from clients.cli import exit_program
atexit.register(lambda: print("handler", flush=True))
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
print("out", end="")  # no newline: still buffered at the exit
print("err", file=sys.stderr, end="")
exit_program(3)
"""


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, mode],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_exit_runs_handlers_flushes_and_keeps_the_code():
    out = _run("plain")
    assert out.returncode == 3, out.stderr[-2000:]
    assert out.stdout == "outhandler\n"
    assert out.stderr == "err"


def test_a_thread_that_is_not_a_daemon_is_waited_for():
    out = _run("thread")
    assert out.returncode == 3, out.stderr[-2000:]
    assert "thread done" in out.stdout and "handler" in out.stdout
