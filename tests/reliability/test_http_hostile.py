"""The HTTP front door attacked by its users, over real HTTP on loopback: `serve all` with tokens
(the three services in one process, the front door before them), Alice's trained model, and Bob
trying to reach it, or to break the server with malformed, oversized or slow requests. Every
answer is the right status in the route's error shape, with the field's path; no 500, no hang."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time

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
    """(base URL, Alice's finished job, the front door's backend): `serve all
    --auth-tokens-file` as start_embedded starts it, and the front door on a free port."""
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
        yield f"http://127.0.0.1:{http.port}", job, backend
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
    base, job, _ = front
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
    base, _, _ = front
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
    base, _, _ = front
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
    base, job, _ = front
    got = post(base, f"/models/{job.id}/predict", body, kind)
    assert got.status_code == 400, got.text
    assert got.json()["error"].startswith(f"{field}: ")


def test_framework_errors_use_each_routes_shape(front):
    base, _, _ = front
    unknown = httpx.get(f"{base}/v1/models/a/b", headers=as_(ALICE))
    assert unknown.status_code == 404 and unknown.json()["error"]["type"]
    method = httpx.get(f"{base}/v1/embeddings", headers=as_(ALICE))
    assert method.status_code == 405 and method.json()["error"]["message"]
    assert httpx.get(f"{base}/embed").json()["error_type"] == "Validation"
    assert "error" in httpx.get(f"{base}/nowhere").json()


def raw_request(port: int, head: bytes) -> socket.socket:
    """A connection that has sent `head` (a request line, headers and maybe some body)."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(head)
    conn.settimeout(30)
    return conn


def status_of(conn: socket.socket) -> int:
    answer = b""
    while b"\r\n" not in answer:
        chunk = conn.recv(4096)
        if not chunk:
            break
        answer += chunk
    return int(answer.split(b" ")[1])


def head(path: str, token: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{"
    ).encode()


def test_bodies_are_bounded_in_size_and_time_and_callers_in_slots(front):
    """A body declared or streamed past the limit is 413 before it is read whole; one that does
    not arrive in time is 408; one caller holding its slots does not keep another out."""
    _, _, backend = front
    app = create_app(backend, max_concurrent=4, max_body_bytes=4096, body_timeout_s=1.5)
    running = RunningHttp(app, HttpSettings(port=0)).start()
    port, base = running.port, f"http://127.0.0.1:{running.port}"
    held: list[socket.socket] = []
    try:
        huge = raw_request(port, head("/v1/embeddings", ALICE, 10**11))
        assert status_of(huge) == 413  # nothing of it read
        streamed = httpx.post(
            f"{base}/embed",
            content=iter([b'{"inputs": "'] + [b"x" * 1024] * 8 + [b'"}']),
            headers=as_(ALICE),
        )
        assert streamed.status_code == 413 and streamed.json()["error_type"] == "Validation"
        # Alice's two slots (half of 4) held by bodies that never come; her third request is
        # 429 at once, Bob's is answered; hers are 408 once their time is up.
        started = time.monotonic()
        held = [raw_request(port, head("/v1/embeddings", ALICE, 100)) for _ in range(2)]
        time.sleep(0.3)
        third = httpx.post(
            f"{base}/v1/embeddings", json={"model": "minilm", "input": "x"}, headers=as_(ALICE)
        )
        assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limit_exceeded"
        bob = httpx.post(f"{base}/embed", json={"inputs": "hello"}, headers=as_(BOB))
        assert bob.status_code == 200, bob.text
        assert [status_of(conn) for conn in held] == [408, 408]
        assert time.monotonic() - started < 10
        again = httpx.post(f"{base}/embed", json={"inputs": "hello"}, headers=as_(ALICE))
        assert again.status_code == 200
    finally:
        for conn in held:
            conn.close()
        running.stop()


@pytest.mark.parametrize(
    "dataset, field",
    [
        ({"columns": ["text"], "data": [["a"]], "index": [1, 2, 3]}, "dataset.index"),
        ({"columns": ["text"], "data": [["a"]], "index": 5}, "dataset.index"),
        ({"columns": ["text"], "data": [["a"]], "index": "x"}, "dataset.index"),
        ({"columns": [["text"]], "data": [["a"]]}, "dataset.columns[0]"),
        ({"columns": ["text", "text"], "data": [["a", "b"]]}, "dataset.columns[1]"),
        ({"columns": ["text"], "data": [["a"], [{"x": 1}]]}, "dataset.data[1][0]"),
        ({"columns": ["text"], "data": [["a", "b"]]}, "dataset.data[0]"),
        ({"columns": "text", "data": [["a"]]}, "dataset.columns"),
        ({"columns": ["text"], "data": "a"}, "dataset.data"),
        ('{"columns": ["text"], "data": [["\\ud800"]]}', "dataset.data[0][0]"),
        ("[" * 50_000, "dataset"),
    ],
)
def test_batch_predict_refuses_a_malformed_table_by_its_path(front, dataset, field):
    base, job, _ = front
    for body in ({"json": {"dataset": dataset}}, {"data": {"dataset": json.dumps(dataset)}}):
        if isinstance(dataset, str):
            body = {"data": {"dataset": dataset}}
        got = httpx.post(f"{base}/models/{job.id}/batch_predict", headers=as_(ALICE), **body)
        assert got.status_code == 400, got.text
        assert got.json()["error"].startswith(f"{field}: ")


def test_one_callers_many_requests_leave_threads_for_another(front):
    """45 of Alice's batch_predicts that take long (held here) hold at most her share of the
    worker threads (8 of 40): Bob's prediction and embedding are answered meanwhile. They
    held all 40, and Bob waited for hers to finish."""
    from concurrent.futures import ThreadPoolExecutor

    from clients.http.backend import MAX_THREADS_PER_CALLER, _caller_token

    base, job, backend = front
    real, gate, running = backend.predict, threading.Event(), []

    def slow(model, columns):
        if _caller_token.get() == ALICE:
            running.append(1)
            gate.wait(60)
        return real(model, columns)

    table = {"columns": ["text"], "data": [["see you at lunch"]]}

    def hers(_):
        return httpx.post(
            f"{base}/models/{job.id}/batch_predict",
            json={"dataset": table},
            headers=as_(ALICE),
            timeout=90,
        )

    backend.predict = slow
    try:
        with ThreadPoolExecutor(45) as pool:
            answers = pool.map(hers, range(45))
            deadline = time.monotonic() + 30
            while len(running) < MAX_THREADS_PER_CALLER and time.monotonic() < deadline:
                time.sleep(0.05)
            bob = httpx.post(
                f"{base}/models/{job.id}/predict",
                json={"text": "win cash"},
                headers=as_(BOB),
                timeout=20,
            )
            assert bob.status_code == 404  # answered (not his model), not left waiting
            embedded = httpx.post(
                f"{base}/embed", json={"inputs": "hi"}, headers=as_(BOB), timeout=20
            )
            assert embedded.status_code == 200
            assert len(running) == MAX_THREADS_PER_CALLER
            gate.set()
            assert {a.status_code for a in answers} == {200}
    finally:
        gate.set()
        backend.predict = real


def test_serve_http_refuses_bad_settings_in_one_line(tmp_path):
    """A port in use, a negative request limit, a body limit that is no number, no merged
    call allowed in flight: one line naming the setting, exit 2 (a usage error), no traceback
    (they were tracebacks, or a server that answered every request 429)."""
    from tests.e2e.conftest import cli

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        runs = [
            (["--port", taken.getsockname()[1]], {}, "port: cannot listen"),
            (["--port", 0, "--max-concurrent-requests", -1], {}, "max_concurrent_requests"),
            (["--port", 0], {"TUNEWIRE_HTTP_MAX_BODY_BYTES": "abc"}, "TUNEWIRE_HTTP_MAX_BODY"),
            (["--port", 0], {"TUNEWIRE_HTTP_CALLS_IN_FLIGHT": "0"}, "CALLS_IN_FLIGHT"),
        ]
        for flags, env, said in runs:
            got = cli("serve", "http", "--embedder", "127.0.0.1:1", *flags, env=env, timeout=60)
            assert got.returncode == 2 and "Traceback" not in got.stderr, got.stderr
            assert said in got.stderr.strip().splitlines()[-1]
    finally:
        taken.close()


@pytest.mark.parametrize("token", ["é-token".encode(), b"t" * 100_000])
def test_a_token_no_server_could_know_is_401(front, token):
    """A non-ASCII bearer token was a 500 ("Invalid metadata" from gRPC), a 100 kB one a 429
    (gRPC's metadata limit); both are simply unknown tokens."""
    base, job, _ = front
    header = [(b"authorization", b"Bearer " + token)]
    for path, body in (
        ("/v1/embeddings", {"model": "minilm", "input": "x"}),
        ("/embed", {"inputs": "x"}),
        (f"/models/{job.id}/predict", {"text": "x"}),
    ):
        got = httpx.post(f"{base}{path}", json=body, headers=header, timeout=30)
        assert got.status_code == 401, (path, got.text)
    assert httpx.get(f"{base}/models", headers=header).status_code == 401


def test_merged_calls_never_mix_two_callers(front):
    """Alice's and Bob's embeddings requests sent at once: the front door merges each caller's
    own (coalesce.py), never one's texts into a call made with the other's token, and each
    answer is its own text's vector."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    base, _, backend = front
    coalescer = backend._texts
    gate, run, calls = threading.Event(), coalescer._run, []

    def held(key, parts):
        gate.wait(60)
        calls.append((key[0], [t for texts in parts for t in texts]))
        return run(key, parts)

    def send(i: int):
        who, token = ("alice", ALICE) if i % 2 else ("bob", BOB)
        body = {"model": "minilm", "input": f"{who} says {i}"}
        return httpx.post(f"{base}/v1/embeddings", json=body, headers=as_(token), timeout=60)

    coalescer._run = held
    try:
        with ThreadPoolExecutor(24) as pool:
            answers = pool.map(send, range(24))
            deadline = time.monotonic() + 30
            while sum(map(len, coalescer._queued.values())) < 20 and time.monotonic() < deadline:
                time.sleep(0.01)
            gate.set()
            answers = list(answers)
    finally:
        gate.set()
        coalescer._run = run
    assert len(calls) < 24  # some were merged
    for token, texts in calls:
        assert {t.split()[0] for t in texts} == {"alice" if token == ALICE else "bob"}
    for i, answer in enumerate(answers):
        alone = send(i).json()["data"][0]["embedding"]
        np.testing.assert_allclose(answer.json()["data"][0]["embedding"], alone, rtol=1e-5)


def test_prediction_limits_name_the_requests_own_fields(front):
    """The embedder's limits on PredictRows (`columns[0].values[1]`) named by the HTTP
    request's fields: the predict field, the batch table's cell."""
    base, job, _ = front
    url, big = f"{base}/models/{job.id}", "x" * ((1 << 20) + 1)
    one = httpx.post(f"{url}/predict", json={"text": big}, headers=as_(ALICE), timeout=60)
    assert one.status_code == 400 and one.json()["error"].startswith("text: "), one.text
    for rows, field in (([["a"], [big]], "dataset.data[1][0]"), ([["a"]] * 4097, "dataset.data")):
        table = {"columns": ["text"], "data": rows}
        got = httpx.post(
            f"{url}/batch_predict", json={"dataset": table}, headers=as_(ALICE), timeout=60
        )
        assert got.status_code == 400 and got.json()["error"].startswith(f"{field}: "), got.text


def test_a_shared_trainer_reads_no_callers_path(front, tmp_path):
    """`serve all` with tokens: a job's base model is a Hub id or under the trainer's roots, as
    for a trainer of its own; it read any directory on the machine (someone else's model)."""
    from clients.http.backend import _caller_token
    from tunewire.errors import PermissionDenied

    _, job, backend = front
    (tmp_path / "private-model").mkdir()
    (tmp_path / "private-model" / "config.json").write_text("{}")
    cfg = {
        "model_type": "llm",
        "base_model": str(tmp_path / "private-model"),
        "input_features": [{"name": "text", "type": "text"}],
        "output_features": [{"name": "label", "type": "text"}],
    }
    as_bob = backend.as_caller(BOB)  # the front door's trainer client, with Bob's token
    try:
        with pytest.raises(PermissionDenied) as err:
            backend.trainer.create_job(cfg, dataset_id=job.dataset_id)
        assert err.value.field == "base_model" and err.value.reason == "OUTSIDE_MODEL_ROOTS"
    finally:
        _caller_token.reset(as_bob)


def test_a_shared_embedder_loads_no_encoder_from_a_callers_path(front, tmp_path):
    """`serve all` with tokens: an encoder is a --model name, a Hub id or under the data
    directory's models; it loaded any directory on the machine holding a config.json."""
    from clients.http.backend import _caller_token
    from clients.sdk import EncoderSpec
    from tunewire.errors import PermissionDenied

    _, _, backend = front
    as_bob = backend.as_caller(BOB)
    try:
        with pytest.raises(PermissionDenied) as err:
            backend.embedder.embed(["x"], EncoderSpec(model=str(tmp_path / "someone's-model")))
        assert err.value.reason == "OUTSIDE_MODEL_ROOTS"
    finally:
        _caller_token.reset(as_bob)
