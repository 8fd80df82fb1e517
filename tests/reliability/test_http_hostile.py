"""The HTTP front door attacked by its users, over real HTTP on loopback: `serve all` with tokens
(the three services in one process, the front door before them), Alice's trained model, and Bob
trying to reach it, or to break the server with malformed, oversized or slow requests. Every
answer is the right status in the route's error shape, with the field's path; no 500, no hang."""

from __future__ import annotations

import shutil

import httpx
import pandas as pd
import pytest

from clients.http.app import create_app
from clients.http.backend import Backend
from clients.http.server import HttpSettings, RunningHttp
from tests.e2e.conftest import text_config

ALICE, BOB = "tok-alice-1c2e", "tok-bob-9f3a"
TOKENS = f"{ALICE} train alice\n{BOB} train bob\ntok-svc-77d0 service svc\n"


@pytest.fixture(scope="module")
def front(tmp_path_factory, minilm):
    """(base URL, Alice's finished job): `serve all --auth-tokens-file` as start_embedded
    starts it, and the front door on a free port."""
    from clients.embedded import start_embedded
    from clients.sdk import TrainerClient, connect
    from tunewire.server import ServerSecurity
    from tunewire.tls import ClientSecurity

    root = tmp_path_factory.mktemp("hostile")
    (root / "tokens").write_text(TOKENS)
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNEWIRE_TOKEN", "tok-svc-77d0")
    mp.delenv("TUNEWIRE_TOKEN_FILE", raising=False)
    services = start_embedded(
        root / "data",
        security=ServerSecurity(auth_tokens_file=root / "tokens"),
        models={"minilm": minilm},
    )
    backend = Backend(services.embedder_address, services.trainer_address, {"minilm": minilm})
    http = RunningHttp(create_app(backend), HttpSettings(port=0)).start()
    address = services.trainer_address
    trainer = TrainerClient(address, channel=connect(address, ClientSecurity(token=ALICE)))
    rows = [("win free cash now, call", "spam"), ("see you at lunch", "ham")] * 20
    data = pd.DataFrame(rows, columns=["text", "label"]).to_csv(index=False).encode()
    cfg = text_config(minilm, {"name": "label", "type": "category"}, epochs=2)
    job = trainer.wait(
        trainer.create_job(cfg, dataset_id=trainer.upload_dataset(data, "d.csv").id).id
    )
    assert job.artifact_path, job.error
    try:
        yield f"http://127.0.0.1:{http.port}", job
    finally:
        trainer.close()
        http.stop()
        backend.close()
        services.close()
        mp.undo()


def json_list(n: int) -> bytes:
    return ("[" + ", ".join(['"hi"'] * n) + "]").encode()


def as_(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_bob_cannot_predict_with_alices_model_by_its_path(front, tmp_path):
    base, job = front
    row = {"text": "win free cash"}

    def predict(model: str, token: str) -> httpx.Response:
        return httpx.post(f"{base}/models/{model}/predict", json=row, headers=as_(token))

    assert predict(job.artifact_path, ALICE).status_code == 200
    assert predict(job.id, ALICE).json() == predict(job.artifact_path, ALICE).json()
    missing = job.artifact_path.replace(job.id, "job-000000000000")
    nowhere = predict(missing, BOB)
    assert nowhere.status_code == 404
    for model in (job.artifact_path, f"{job.artifact_path}/../{job.id}", job.id):
        got = predict(model, BOB)
        assert got.status_code == 404, got.text
        # Word for word what a job that does not exist gets.
        assert got.json()["error"].replace(job.id, "X") == nowhere.json()["error"].replace(
            "job-000000000000", "X"
        )
    # Nor a copy of it elsewhere on the server's disk: a shared server reads no caller's path.
    copy = shutil.copytree(job.artifact_path, tmp_path / "copy")
    assert predict(str(copy), BOB).status_code == 403
    assert predict(str(copy), ALICE).status_code == 403


JSON = {"content-type": "application/json"}
DEEP = b"[" * 100_000 + b"]" * 100_000


def post(base: str, path: str, body: bytes, kind: str = "application/json") -> httpx.Response:
    return httpx.post(
        f"{base}{path}", content=body, headers={"content-type": kind, **as_(ALICE)}, timeout=60
    )


@pytest.mark.parametrize(
    "body, param",
    [
        (b"{not json", "body"),
        (b'{"model": "minilm", "input": "\xff\xfe"}', "body"),  # not UTF-8
        (b'{"model": "minilm", "input": ' + DEEP + b"}", "body"),
        (b'{"model": "minilm", "input": "a\\ud800b"}', "input[0]"),  # a lone surrogate
        (b'{"model": "minilm", "input": ["ok", "\\udfff"]}', "input[1]"),
        (b'{"model": "minilm", "input": 5}', "input"),
        (b'{"model": "minilm", "input": null}', "input"),
        (b'{"model": "minilm", "input": {"a": 1}}', "input"),
        (b'{"model": "minilm", "input": [["a"]]}', "input[0]"),
        (b'{"model": "minilm", "input": [1.5]}', "input[0]"),
        (b'{"model": "minilm", "input": [1, 2]}', "input[0]"),  # token arrays: send text
        (b'{"model": "minilm", "input": ["x", null]}', "input[1]"),
        (b'{"model": "minilm", "input": "' + b"x" * (1 << 20) + b'y"}', "input[0]"),
        (b'{"model": "minilm", "input": ' + json_list(4097) + b"}", "input"),
    ],
)
def test_openai_bad_bodies_are_400_in_its_envelope(front, body, param):
    base, _ = front
    got = post(base, "/v1/embeddings", body)
    assert got.status_code == 400, got.text
    error = got.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"].startswith(f"{param}: ")


@pytest.mark.parametrize(
    "body, status, field",
    [
        (b"{bad", 422, "body"),
        (b'{"inputs": "\xff"}', 422, "body"),
        (b'{"inputs": "a\\ud800"}', 422, "inputs[0]"),
        (b'{"inputs": 5}', 422, "inputs"),
        (b'{"inputs": [1, 2]}', 422, "inputs[0]"),
        (b'{"inputs": ' + json_list(4097) + b"}", 413, "inputs"),
        (b'{"inputs": "' + b"x" * (1 << 20) + b'y", "truncate": true}', 413, "inputs[0]"),
    ],
)
def test_tei_bad_bodies_get_teis_status_and_body(front, body, status, field):
    base, _ = front
    got = post(base, "/embed", body)
    assert got.status_code == status, got.text
    assert got.json()["error_type"] == "Validation"
    assert got.json()["error"].startswith(f"{field}: ")


@pytest.mark.parametrize(
    "body, kind, field",
    [
        (b"{bad", "application/json", "body"),
        (b'{"text": "a\\ud800"}', "application/json", "text"),
        (DEEP, "application/json", "body"),
        (b"garbage", "multipart/form-data; boundary=xyz", "body"),
        (b"garbage", "multipart/form-data", "body"),
        (b'{"text": ["a", "b"]}', "application/json", "text"),
        (b'{"text": {"a": 1}}', "application/json", "text"),
    ],
)
def test_ludwig_bad_bodies_are_400(front, body, kind, field):
    base, job = front
    got = post(base, f"/models/{job.id}/predict", body, kind)
    assert got.status_code == 400, got.text
    assert got.json()["error"].startswith(f"{field}: ")


def test_framework_errors_use_each_routes_shape(front):
    base, _ = front
    unknown = httpx.get(f"{base}/v1/models/a/b", headers=as_(ALICE))
    assert unknown.status_code == 404 and unknown.json()["error"]["type"]
    method = httpx.get(f"{base}/v1/embeddings", headers=as_(ALICE))
    assert method.status_code == 405 and method.json()["error"]["message"]
    assert httpx.get(f"{base}/embed").json()["error_type"] == "Validation"
    assert "error" in httpx.get(f"{base}/nowhere").json()
