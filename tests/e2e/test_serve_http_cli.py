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
from tunewire.devices import cpu_has_native_bf16

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
        # By default the front door is a process of its own (`serve http --workers 1`).
        assert any(
            b"clients.http" in Path(f"/proc/{p}/cmdline").read_bytes() for p in _children(proc.pid)
        )
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{base + 3}/v1", api_key="k")
        got = client.embeddings.create(model="mini", input="hello")
        assert len(got.data[0].embedding) == 384
        _assert_the_embedder_knows_the_name(f"127.0.0.1:{base}", got.data[0].embedding)
    finally:
        _stop(proc)


def _assert_the_embedder_knows_the_name(embedder: str, vector: list[float]) -> None:
    """The embedder answers "hello" under the name `mini` with the HTTP answer's vector."""
    from clients.sdk import EmbedderClient, EncoderSpec

    grpc_client = EmbedderClient(embedder)
    by_name = grpc_client.embed(["hello"], EncoderSpec("mini", max_length=256, normalize=True))
    grpc_client.close()
    assert by_name.vectors[0].tolist() == pytest.approx(vector, rel=1e-6)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def test_serve_http_workers_share_one_port_and_answer_as_one(services, embedder, minilm, tmp_path):
    port = free_port()
    proc = _serve(
        [
            *["http", "--embedder", services.embedder_address, "--model", f"mini={minilm}"],
            *["--workers", "2", "--port", str(port)],
        ],
        port,
        tmp_path,
    )
    try:
        workers = [
            pid
            for pid in _children(proc.pid)
            if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
            and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 2
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        texts = [f"worker text {i}" for i in range(16)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda t: client.embeddings.create(model="mini", input=t), texts))
        from clients.sdk import EncoderSpec

        want = embedder.embed(texts, EncoderSpec(minilm, max_length=256, normalize=True)).vectors
        for answer, vector in zip(got, want, strict=True):
            assert answer.data[0].embedding == pytest.approx(vector.tolist(), rel=1e-6)
    finally:
        _stop(proc)
    assert not any(_alive(pid) for pid in workers)  # SIGTERM stopped every worker


def test_serve_http_workers_must_be_at_least_one(services, tmp_path):
    got = subprocess.run(
        [*CLI, "serve", "http", "--embedder", services.embedder_address, "--workers", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert got.returncode != 0 and "workers" in got.stderr and "Traceback" not in got.stderr


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["2", "0"])
def test_serve_all_http_workers_runs_the_front_door_beside_it_or_in_it(minilm, tmp_path, workers):
    while True:
        base = free_port()
        if base + 3 < 65536:
            break
    proc = _serve(
        ["all", "--port", str(base), "--model", f"mini={minilm}", "--http-workers", workers],
        base + 3,
        tmp_path,
    )
    try:
        front = [
            p
            for p in _children(proc.pid)
            if b"clients.http" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        # N: `serve http --workers N`, a process of its own; 0: none, the front door is here.
        assert len(front) == (0 if workers == "0" else 1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{base + 3}/v1", api_key="k")
        got = client.embeddings.create(model="mini", input="hello")
        _assert_the_embedder_knows_the_name(f"127.0.0.1:{base}", got.data[0].embedding)
    finally:
        _stop(proc)
    assert not any(_alive(p) for p in front)


def test_http_workers_end_when_their_supervisor_is_killed(services, minilm, tmp_path):
    """A supervisor killed with SIGKILL (no chance to stop them) leaves no worker on the port."""
    port = free_port()
    proc = _serve(
        [
            *["http", "--embedder", services.embedder_address, "--model", f"mini={minilm}"],
            *["--workers", "2", "--port", str(port)],
        ],
        port,
        tmp_path,
    )
    workers = [
        pid
        for pid in _children(proc.pid)
        if b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(workers) == 2
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


@pytest.mark.slow
@pytest.mark.skipif(
    not cpu_has_native_bf16(),
    reason="this CPU has no bf16 instructions (AVX512-BF16 or AMX)",
)
def test_serve_http_compute_dtype_bf16_is_recorded_and_a_float32_head_refuses_it(
    sms_spam_job, trainer, minilm, tmp_path
):
    """`--compute-dtype bfloat16` runs the in-process embedder in bf16: TEI's /info says so, and
    the job's head, trained on float32 vectors, refuses the bf16 ones by fingerprint."""
    artifact = trainer.download_artifact(sms_spam_job.id, tmp_path / "artifact")
    port = free_port()
    args = ["http", "--model_path", str(artifact), "--model", f"mini={minilm}"]
    proc = _serve([*args, "--compute-dtype", "bfloat16", "--port", str(port)], port, tmp_path)
    try:
        info = httpx.get(f"http://127.0.0.1:{port}/info", timeout=60).json()
        assert info["model_dtype"] == "bfloat16"
        got = httpx.post(f"http://127.0.0.1:{port}/predict", data={"text": SPAMMY}, timeout=60)
        assert got.status_code == 400 and "fingerprint" in got.text
    finally:
        _stop(proc)


def test_serve_http_compute_dtype_is_for_an_embedder_it_starts(services, tmp_path):
    got = subprocess.run(
        [*CLI, "serve", "http", "--embedder", services.embedder_address]
        + ["--compute-dtype", "bfloat16"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert got.returncode != 0 and "compute_dtype" in got.stderr
    assert "Traceback" not in got.stderr
