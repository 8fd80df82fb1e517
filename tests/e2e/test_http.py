"""The HTTP front door over real HTTP on loopback: the official `openai` client, TEI's and
Ludwig serve's request shapes, vectors equal to the gRPC path's, a trained SMS model predicting
`spam`, the error envelopes (401, 404, 413, 429), and nothing stored by a prediction."""

from __future__ import annotations

import functools
import json
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from clients.http.app import create_app
from clients.http.backend import Backend
from clients.http.server import HttpSettings, RunningHttp
from clients.sdk import EncoderSpec
from tests.e2e.conftest import SPAMMY
from tests.e2e.test_online import HAM, stored

# A first request may load the encoder: httpx's default 5 s is too short on a loaded machine.
post = functools.partial(httpx.post, timeout=60)
get = functools.partial(httpx.get, timeout=60)


def serve(backend: Backend, **kw) -> RunningHttp:
    return RunningHttp(create_app(backend, **kw), HttpSettings(port=0)).start()


@pytest.fixture(scope="module")
def http(services, minilm):
    backend = Backend(
        services.embedder_address, services.trainer_address, models={"minilm": minilm}
    )
    running = serve(backend)
    yield f"http://127.0.0.1:{running.port}"
    running.stop()
    backend.close()


def grpc_vectors(embedder, minilm, texts, normalize=True):
    spec = EncoderSpec(model=minilm, pooling="mean", max_length=256, normalize=normalize)
    return embedder.embed(texts, spec).vectors


def test_openai_client_embeddings_equal_the_grpc_vectors(http, embedder, minilm):
    client = openai.OpenAI(base_url=f"{http}/v1", api_key="unused", max_retries=0)
    texts = ["a cat sat on the mat", "tunewire serves embeddings"]
    got = client.embeddings.create(model="minilm", input=texts)  # base64, the client's default
    want = grpc_vectors(embedder, minilm, texts)
    assert [d.index for d in got.data] == [0, 1] and got.model == "minilm"
    np.testing.assert_array_equal(np.array([d.embedding for d in got.data], np.float32), want)
    assert got.usage.prompt_tokens == got.usage.total_tokens > 2 * 2
    as_float = client.embeddings.create(model="minilm", input=texts[0], encoding_format="float")
    np.testing.assert_allclose(as_float.data[0].embedding, want[0], rtol=1e-6)
    same = client.embeddings.create(model="minilm", input=texts[:1], dimensions=384)
    assert len(same.data[0].embedding) == 384
    assert [m.id for m in client.models.list().data] == ["minilm"]
    assert client.models.retrieve("minilm").id == "minilm"


def test_openai_errors_use_its_envelope(http):
    client = openai.OpenAI(base_url=f"{http}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="nope", input="x")
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="minilm", input="x", dimensions=64)
    assert err.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="minilm", input=["ok", ""])
    assert err.value.body["param"] == "input[1]"
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="minilm", input="word " * 400)
    assert "at most 256" in err.value.body["message"]
    raw = post(f"{http}/v1/embeddings", json={"input": "x"})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "model"


def test_tei_embed_and_info(http, embedder, minilm):
    got = post(f"{http}/embed", json={"inputs": "a cat sat on the mat"})
    assert got.status_code == 200
    np.testing.assert_allclose(
        got.json(), grpc_vectors(embedder, minilm, ["a cat sat on the mat"]), rtol=1e-6
    )
    raw = post(f"{http}/embed", json={"inputs": ["x", "y"], "normalize": False}).json()
    np.testing.assert_allclose(raw, grpc_vectors(embedder, minilm, ["x", "y"], False), rtol=1e-6)
    long = post(f"{http}/embed", json={"inputs": "word " * 400})
    assert long.status_code == 413 and long.json()["error_type"] == "Validation"
    assert post(f"{http}/embed", json={"inputs": "word " * 400, "truncate": True}).is_success
    assert post(f"{http}/embed", json={"nope": 1}).status_code == 422
    info = get(f"{http}/info").json()
    assert info["model_id"] == "minilm" and info["max_input_length"] == 256
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}


def test_ludwig_predict_says_spam_and_stores_nothing(http, sms_spam_job, services, embedder):
    before = stored(services)
    url = f"{http}/models/{sms_spam_job.id}"
    form = post(f"{url}/predict", data={"text": SPAMMY})
    assert form.status_code == 200, form.text
    assert form.json()["label_predictions"] == "spam"
    body = form.json()
    assert body["label_probability"] == body["label_probabilities_spam"] > 0.5
    assert body["label_probabilities"] == [
        body["label_probabilities_ham"],
        body["label_probability"],
    ]
    as_json = post(f"{url}/predict", json={"text": HAM}).json()
    assert as_json["label_predictions"] == "ham"
    multipart = post(f"{url}/predict", files={"text": (None, SPAMMY)}).json()
    assert multipart == body
    # The same as over gRPC.
    grpc = embedder.predict_rows(sms_spam_job.id, {"text": SPAMMY})
    assert grpc["label_probabilities_spam"][0] == pytest.approx(body["label_probabilities_spam"])
    table = {"columns": ["text"], "index": [7, 9], "data": [[SPAMMY], [HAM]]}
    batch = post(f"{url}/batch_predict", data={"dataset": json.dumps(table)}).json()
    assert batch["index"] == [7, 9]
    col = batch["columns"].index("label_predictions")
    assert [row[col] for row in batch["data"]] == ["spam", "ham"]
    assert post(f"{url}/batch_predict", json={"dataset": table}).json() == batch
    missing = post(f"{url}/predict", json={"message": SPAMMY})
    assert missing.status_code == 400 and "'text'" in missing.json()["error"]
    assert post(f"{http}/models/job-000000000000/predict", json={"text": "x"}).status_code == 404
    assert stored(services) == before


def test_model_path_is_served_at_predict(services, sms_spam_job, trainer, tmp_path):
    local = trainer.download_artifact(sms_spam_job.id, tmp_path / "artifact")
    backend = Backend(services.embedder_address, served_model=str(local))
    running = serve(backend)
    try:
        base = f"http://127.0.0.1:{running.port}"
        assert post(f"{base}/predict", data={"text": SPAMMY}).json()["label_predictions"] == "spam"
        by_path = post(f"{base}/models/{local}/predict", json={"text": HAM})
        assert by_path.json()["label_predictions"] == "ham"
        assert get(f"{base}/models").json()["served_model"] == str(local)
        # No encoder named: TEI's default model does not exist.
        assert post(f"{base}/embed", json={"inputs": "x"}).status_code == 404
    finally:
        running.stop()
        backend.close()


def test_model_path_in_process_answers_as_over_grpc(sms_spam_job, trainer, tmp_path):
    """`serve http --model_path`: predictions through the in-process servicer (local.py), with
    the answers and errors the same requests get through the embedder's gRPC port."""
    from clients.http.local import LocalPredictions
    from services.embedder.app import Settings, start

    local = trainer.download_artifact(sms_spam_job.id, tmp_path / "artifact")
    app = start(Settings(port=0, data_dir=tmp_path / "data", artifact_roots=[local]))
    address = f"127.0.0.1:{app.port}"
    over_grpc = Backend(address, served_model=str(local))
    here = Backend(address, served_model=str(local), local_predict=LocalPredictions(app.servicer))

    def no_grpc(*args, **kwargs):
        raise AssertionError("a prediction went through gRPC")

    here.embedder.predict_columns = no_grpc
    servers = [serve(over_grpc), serve(here)]
    table = {"columns": ["text"], "index": [3, 4], "data": [[SPAMMY], [HAM]]}
    requests = [
        ("/predict", {"text": SPAMMY}),
        ("/predict", {"text": HAM}),
        ("/batch_predict", {"dataset": table}),
        ("/predict", {"message": SPAMMY}),  # the model reads `text`
        (f"/models/{tmp_path}/predict", {"text": SPAMMY}),  # outside the artifact roots
        ("/models/job-000000000000/predict", {"text": SPAMMY}),  # no trainer to ask
    ]
    try:
        answers = [
            [
                (got.status_code, got.json())
                for got in (
                    post(f"http://127.0.0.1:{s.port}{path}", json=body, timeout=60)
                    for path, body in requests
                )
            ]
            for s in servers
        ]
    finally:
        for s in servers:
            s.stop()
        over_grpc.close()
        here.close()
        app.stop()
    assert answers[1] == answers[0]
    assert [status for status, _ in answers[1]][:3] == [200, 200, 200]
    assert answers[1][0][1]["label_predictions"] == "spam"
    assert all(status >= 400 for status, _ in answers[1][3:])


def _held(coalescer):
    """Hold `coalescer`'s calls until released, so requests sent meanwhile queue up (whether
    they merge must not depend on how fast this machine answers). Returns the release."""
    gate, run = threading.Event(), coalescer._run
    coalescer._run = lambda key, parts: (gate.wait(60), run(key, parts))[1]
    return gate


def _queued(coalescer) -> int:
    return sum(len(parts) for parts in list(coalescer._queued.values()))


def test_concurrent_requests_are_merged_and_each_gets_its_own_answer(
    services, sms_spam_job, embedder, minilm
):
    """Single-row predictions and embeddings requests sent at once share calls to the embedder
    (coalesce.py), and each answer is the one the request gets alone; an over-long input among
    them fails only its own request, with its own field path."""
    from concurrent.futures import ThreadPoolExecutor

    backend = Backend(services.embedder_address, models={"minilm": minilm})
    running = serve(backend)
    base = f"http://127.0.0.1:{running.port}"
    texts = [f"concurrent text number {i} about cats" for i in range(24)]
    rows = [SPAMMY if i % 2 else HAM for i in range(24)]

    def embed(i: int):
        text = "word " * 400 if i == 5 else texts[i]
        return post(f"{base}/v1/embeddings", json={"model": "minilm", "input": text})

    def predict(i: int):
        return post(f"{base}/models/{sms_spam_job.id}/predict", json={"text": rows[i]})

    def sent_at_once(coalescer, send):
        """All 24 requests in flight, 2 calls held and the other 22 queued, then released."""
        gate = _held(coalescer)
        with ThreadPoolExecutor(24) as pool:
            answers = pool.map(send, range(24))
            deadline = time.monotonic() + 60
            while _queued(coalescer) < 22 and time.monotonic() < deadline:
                time.sleep(0.01)
            gate.set()
            return list(answers)

    try:
        backend.model("minilm")  # its dimension and limit, once, before the requests
        embedded = sent_at_once(backend._texts, embed)
        predicted = sent_at_once(backend._rows, predict)
    finally:
        running.stop()
        backend.close()
    assert embedded[5].status_code == 400 and embedded[5].json()["error"]["param"] == "input[0]"
    ok = [i for i in range(24) if i != 5]
    got = np.array([embedded[i].json()["data"][0]["embedding"] for i in ok], np.float32)
    np.testing.assert_allclose(got, grpc_vectors(embedder, minilm, [texts[i] for i in ok]))
    assert all(embedded[i].json()["usage"]["prompt_tokens"] > 5 for i in ok)
    labels = [r.json()["label_predictions"] for r in predicted]
    assert labels == ["spam" if i % 2 else "ham" for i in range(24)]
    # 2 calls held alone, the 22 queued behind them merged into at most 2 more.
    assert backend._texts.calls <= 4 and backend._rows.calls <= 4


def test_health_models_and_openapi(http):
    assert get(f"{http}/health").json() == {"status": "ok"}
    models = get(f"{http}/models").json()
    assert models["embedding_models"][0]["name"] == "minilm"
    paths = get(f"{http}/openapi.json").json()["paths"]
    assert {"/v1/embeddings", "/embed", "/models/{model}/predict"} <= set(paths)
    assert get(f"{http}/docs").status_code == 200


def test_overload_is_429_in_each_shape(services, minilm):
    backend = Backend(services.embedder_address, models={"minilm": minilm})
    running = serve(backend, max_concurrent=0)
    try:
        base = f"http://127.0.0.1:{running.port}"
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.embeddings.create(model="minilm", input="x")
        tei = post(f"{base}/embed", json={"inputs": "x"})
        assert tei.status_code == 429 and tei.json()["error_type"] == "Overloaded"
    finally:
        running.stop()
        backend.close()


def test_the_callers_token_reaches_the_services(tmp_path, minilm):
    """401 for a bad key, in OpenAI's envelope; the right key works: the front door forwards
    the caller's bearer token and the embedder decides."""
    from services.embedder.app import Settings, start
    from tunewire.server import ServerSecurity

    tokens = tmp_path / "tokens"
    tokens.write_text("good-token embed\n")
    app = start(
        Settings(port=0, data_dir=tmp_path, security=ServerSecurity(auth_tokens_file=tokens))
    )
    backend = Backend(f"127.0.0.1:{app.port}", models={"minilm": minilm})
    running = serve(backend)
    try:
        base = f"http://127.0.0.1:{running.port}/v1"
        bad = openai.OpenAI(base_url=base, api_key="bad-token", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.embeddings.create(model="minilm", input="x")
        assert err.value.body["type"] == "authentication_error"
        good = openai.OpenAI(base_url=base, api_key="good-token", max_retries=0)
        assert len(good.embeddings.create(model="minilm", input="x").data[0].embedding) == 384
    finally:
        running.stop()
        backend.close()
        app.stop()
