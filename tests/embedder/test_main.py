"""`python -m services.embedder`: flags, env fallbacks, serve until SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.embedder.__main__ import build_parser, settings_from_args

ROOT = Path(__file__).resolve().parents[2]


def test_env_fallbacks_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEWIRE_HOST", "0.0.0.0")
    monkeypatch.setenv("TUNEWIRE_PORT", "6001")
    monkeypatch.setenv("TUNEWIRE_DATA_DIR", str(tmp_path))
    settings = settings_from_args(build_parser().parse_args([]))
    assert (settings.host, settings.port, settings.data_dir) == ("0.0.0.0", 6001, tmp_path)
    settings = settings_from_args(
        build_parser().parse_args(
            ["--port", "7", "--max-batch-tokens", "512", "--preload", "a", "b"]
        )
    )
    assert (settings.port, settings.max_batch_tokens, settings.preload) == (7, 512, ["a", "b"])


def test_switch_interval_from_flag_or_env_and_set_by_start(monkeypatch, tmp_path):
    import pytest

    from services.embedder.app import Settings, start

    assert settings_from_args(build_parser().parse_args([])).switch_interval_ms is None
    monkeypatch.setenv("TUNEWIRE_SWITCH_INTERVAL_MS", "0.5")
    assert settings_from_args(build_parser().parse_args([])).switch_interval_ms == 0.5
    args = build_parser().parse_args(["--switch-interval-ms", "2"])
    assert settings_from_args(args).switch_interval_ms == 2.0
    monkeypatch.setenv("TUNEWIRE_SWITCH_INTERVAL_MS", "0")
    with pytest.raises(SystemExit):  # a usage error naming the flag, no traceback
        build_parser().parse_args([])
    before = sys.getswitchinterval()
    try:
        app = start(Settings(port=0, data_dir=tmp_path, device="cpu", switch_interval_ms=0.25))
        app.stop()
        assert sys.getswitchinterval() == pytest.approx(0.00025)
    finally:
        sys.setswitchinterval(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serves_until_sigterm(tmp_path):
    port = _free_port()
    env = {**os.environ, "TUNEWIRE_PORT": str(port), "TUNEWIRE_LOG_FORMAT": "json"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.embedder", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="tunewire.v1.EmbedderService"), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (tmp_path / "cache" / "embeddings.lmdb" / "data.mdb").exists()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert '"cache closed"' in out or "cache closed" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_cache_limit_below_the_floor_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "services.embedder", "--data-dir", str(tmp_path)]
        + ["--cache-max-size", "1000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "cache_max_size 1000 is below" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()
