"""Starting a server: a missing tokens file or certificate is one line naming the flag (was a
traceback), and a server reachable from other machines with neither tokens nor TLS says so
loudly; on loopback it says nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.reliability.procs import ROOT, free_port


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.hub_gateway", "--port", "0", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--auth-tokens-file", "/no/such/tokens"], "--auth-tokens-file /no/such/tokens"),
        (["--tls-cert", "/no/such/crt", "--tls-key", "/no/such/key"], "--tls-cert /no/such/crt"),
    ],
)
def test_a_missing_file_at_start_is_one_line(tmp_path, flags, named):
    proc = _run("--data-dir", str(tmp_path), *flags)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert err.splitlines() == [f"{named}: cannot read it (No such file or directory)"]


def _started_log(tmp_path, host: str, *flags: str) -> str:
    """The log of a gateway on `host` until it serves, then stopped."""
    log = tmp_path / f"gw-{host}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.hub_gateway", "--host", host]
            + ["--port", str(free_port()), "--data-dir", str(tmp_path / host), *flags],
            cwd=ROOT,
            env={**os.environ, "TUNEWIRE_LOG_FORMAT": "json"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "hub_gateway serving" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return log.read_text()


def test_an_unprotected_non_loopback_server_warns_loudly(tmp_path):
    exposed = _started_log(tmp_path, "0.0.0.0")
    assert '"level": "warning"' in exposed and "UNPROTECTED" in exposed
    tokens = tmp_path / "tokens"
    tokens.write_text("t0ken-for-the-test admin alice\n")
    assert "UNPROTECTED" not in _started_log(tmp_path, "0.0.0.0", "--auth-tokens-file", str(tokens))
    assert "UNPROTECTED" not in _started_log(tmp_path, "127.0.0.1")
