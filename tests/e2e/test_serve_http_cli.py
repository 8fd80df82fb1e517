"""`clients/cli.py serve http` and `serve all` as a user runs them: real processes, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import SPAMMY
from tests.reliability.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "clients" / "cli.py")]


def _serve(args: list[str], port: int, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for key in ("TUNEWIRE_EMBEDDER", "TUNEWIRE_TRAINER", "TUNEWIRE_TOKEN", "TUNEWIRE_MODELS"):
        env.pop(key, None)
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [*CLI, "serve", *args, "--data_dir", str(tmp_path / "data")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError((tmp_path / "serve.log").read_text())


def _stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_http_model_path_alone_is_ludwig_serve(sms_spam_job, trainer, tmp_path):
    artifact = trainer.download_artifact(sms_spam_job.id, tmp_path / "artifact")
    port = free_port()
    proc = _serve(["http", "--model_path", str(artifact), "--port", str(port)], port, tmp_path)
    try:
        got = httpx.post(f"http://127.0.0.1:{port}/predict", data={"text": SPAMMY}, timeout=30)
        assert got.json()["label_predictions"] == "spam"
    finally:
        _stop(proc)


@pytest.mark.slow
def test_serve_all_with_a_named_model_serves_http_on_port_plus_3(minilm, tmp_path):
    while True:
        base = free_port()
        if base + 3 < 65536:
            break
    proc = _serve(["all", "--port", str(base), "--model", f"mini={minilm}"], base + 3, tmp_path)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{base + 3}/v1", api_key="k")
        got = client.embeddings.create(model="mini", input="hello")
        assert len(got.data[0].embedding) == 384
        # The embedder knows the name too.
        from clients.sdk import EmbedderClient, EncoderSpec

        grpc_client = EmbedderClient(f"127.0.0.1:{base}")
        by_name = grpc_client.embed(["hello"], EncoderSpec("mini", max_length=256, normalize=True))
        grpc_client.close()
        assert by_name.vectors[0].tolist() == pytest.approx(got.data[0].embedding, rel=1e-6)
    finally:
        _stop(proc)
