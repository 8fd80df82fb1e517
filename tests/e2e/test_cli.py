"""The CLI as a person runs it: `python clients/cli.py ...` in a subprocess, on the embedded
default or against running servers."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.e2e.conftest import CLI, cli, subset, write_config


@pytest.fixture(scope="module")
def small_csv(example_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "sms_small.csv"
    path.write_bytes(subset(example_data / "sms_spam.csv", 400, seed=5))
    return path


def test_train_predict_evaluate_embedded(tmp_path, small_csv, minilm):
    cfg = write_config(tmp_path / "spam.yaml", minilm)
    data_dir = tmp_path / "state"
    proc = cli(
        "train",
        "-c",
        cfg,
        "--dataset",
        small_csv,
        "--data-dir",
        data_dir,
        "--output_directory",
        tmp_path / "out",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["state"] == "SUCCEEDED"
    assert summary["metrics"]["test"]["label"]["accuracy"] > 0.868  # above the majority class
    artifact = Path(summary["artifact"])
    assert (artifact / "head.safetensors").exists() and artifact.parent.name == "out"
    assert "Traceback" not in proc.stderr
    assert "training" in proc.stderr  # progress was shown

    proc = cli(
        "predict",
        "--model",
        artifact,
        "--dataset",
        small_csv,
        "--data_dir",
        data_dir,
        "--output_directory",
        tmp_path / "pred",
    )
    assert proc.returncode == 0, proc.stderr
    preds = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(preds) == 400
    assert {"label_predictions", "label_probabilities_True"} <= set(preds.columns)

    proc = cli(
        "evaluate",
        "--model",
        summary["job_id"],
        "--dataset",
        small_csv,
        "--data_dir",
        data_dir,
        "--output_directory",
        tmp_path / "eval",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])["metrics"]
    assert metrics["test"]["label"]["accuracy"] > 0.868

    proc = cli("jobs", "list", "--data_dir", data_dir)
    assert summary["job_id"] in proc.stdout


def test_train_against_a_running_trainer(tmp_path, small_csv, minilm, services):
    cfg = write_config(tmp_path / "spam.yaml", minilm, epochs=2)
    proc = cli(
        "train",
        "--config",
        cfg,
        "--training_set",
        small_csv,
        "--json",
        env={"TUNEWIRE_TRAINER": services.trainer_address},
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["artifact"].startswith(str(services.data_dir))


def test_embed_matches_the_sdk(tmp_path, minilm, embedder):
    from clients.sdk import EncoderSpec

    lines = ["first text", "second text", "first text", "a third, longer line of text"]
    (tmp_path / "in.txt").write_text("\n".join(lines))
    proc = cli(
        "embed",
        "--model",
        minilm,
        "--input",
        tmp_path / "in.txt",
        "--output",
        tmp_path / "out.npy",
        "--normalize",
        "--max_length",
        "32",
        "--data_dir",
        tmp_path / "state",
    )
    assert proc.returncode == 0, proc.stderr
    assert "embedding" in proc.stderr and "4/4" in proc.stderr  # its progress, with a count
    assert "Loading weights" not in proc.stderr  # the loader's own bar stays out
    got = np.load(tmp_path / "out.npy")
    assert got.shape == (4, 384)
    want = embedder.embed(lines, EncoderSpec(minilm, normalize=True, max_length=32)).vectors
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["train", "-c", "{cfg}", "--dataset", "/no/such.csv"],
            "dataset: '/no/such.csv' does not exist",
        ),
        (["train", "-c", "/no/such.yaml", "--dataset", "{csv}"], "does not exist"),
        (["train", "-c", "{badcfg}", "--dataset", "{csv}"], "trainer.epochz: unknown key"),
        (["train", "-c", "{cfg}", "--dataset", "{csv}", "--trainer", "127.0.0.1:1"], "unavailable"),
        (["predict", "--model", "/no/model", "--dataset", "{csv}"], "model"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, small_csv, minilm, args, needle):
    cfg = write_config(tmp_path / "ok.yaml", minilm)
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("epochs:", "epochz:"))
    args = [a.format(cfg=cfg, badcfg=bad, csv=small_csv) for a in args]
    proc = cli(*args, "--data_dir", tmp_path / "state", timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert needle.lower() in proc.stderr.lower(), proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_all_then_sigterm_drains(tmp_path):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    base = _free_port()
    while any(_busy(base + i) for i in range(3)):
        base = _free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "all", "--port", str(base), "--data_dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{base + 1}")
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            try:
                status = stub.Check(
                    health_pb2.HealthCheckRequest(service="tunewire.v1.TrainerService"), timeout=1
                ).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                time.sleep(0.3)
        assert status == health_pb2.HealthCheckResponse.SERVING
        channel.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
