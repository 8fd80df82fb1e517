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


def test_a_reader_that_goes_away_ends_the_program_quietly():
    """`tunewire render_config ... | head -0`: no BrokenPipeError traceback, nor Python's
    'Exception ignored' report at exit; the exit code says what happened (141, as SIGPIPE)."""
    child = subprocess.Popen(
        [sys.executable, "clients/cli.py", "render_config", "-c", "examples/sms_spam.yaml"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child.stdout.close()  # the reader is gone before the first write
    err = child.stderr.read().decode()
    assert child.wait(60) == 141, err[-2000:]
    assert err == ""
