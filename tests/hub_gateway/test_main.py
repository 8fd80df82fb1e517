"""`python -m services.hub_gateway`: flags, environment fallbacks, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.hub_gateway.__main__ import build_parser, settings_from_args

ROOT = Path(__file__).resolve().parents[2]


def test_environment_fallbacks(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEWIRE_PORT", "6001")
    monkeypatch.setenv("TUNEWIRE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TUNEWIRE_TRAINER", "trainer:50052")
    monkeypatch.setenv("TUNEWIRE_ARTIFACT_ROOTS", os.pathsep.join(["/a", "/b"]))
    monkeypatch.setenv("HF_TOKEN_PATH", "/secrets/hf/token")
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.local")
    s = settings_from_args(build_parser().parse_args([]))
    assert (s.port, s.data_dir, s.trainer_address) == (6001, tmp_path, "trainer:50052")
    assert s.artifact_roots == [Path("/a"), Path("/b")]
    assert s.token_file == Path("/secrets/hf/token") and s.endpoint == "http://hub.local"
    s = settings_from_args(
        build_parser().parse_args(
            ["--port", "7", "--artifact-root", "/c", "--artifact_root", "/d", "--trainer", "t:1"]
        )
    )
    assert s.port == 7 and s.artifact_roots == [Path("/c"), Path("/d")]
    assert s.trainer_address == "t:1"


def test_serves_until_sigterm(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "TUNEWIRE_LOG_FORMAT": "json", "HF_TOKEN": "hf_never_logged_123"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.hub_gateway",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
            "--endpoint",
            "http://127.0.0.1:9",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != health_pb2.HealthCheckResponse.SERVING:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                    status = (
                        health_pb2_grpc.HealthStub(ch)
                        .Check(
                            health_pb2.HealthCheckRequest(service="tunewire.v1.HubGatewayService"),
                            timeout=2,
                        )
                        .status
                    )
            except grpc.RpcError:
                time.sleep(0.3)
        assert status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "stopped" for line in lines)
    assert "hf_never_logged_123" not in out + err
