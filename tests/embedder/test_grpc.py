"""The embedder over real gRPC on loopback: every RPC, health, and rich errors."""

import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.embedder.app import SERVICE_NAME, Settings, start
from tests.embedder.conftest import TEXTS
from tunewire.errors import from_rpc_error
from tunewire.server import channel_options
from tunewire.tensors import from_proto
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc, tensor_pb2


@pytest.fixture(scope="module")
def server(tmp_path_factory, minilm_path):
    app = start(
        Settings(
            port=0,
            data_dir=tmp_path_factory.mktemp("data"),
            preload=[minilm_path],
            max_texts=8,
            device="cpu",
        )
    )
    yield app
    app.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=channel_options()) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return embedder_pb2_grpc.EmbedderServiceStub(channel)


def _spec(path: str, **kw) -> embedder_pb2.EncoderSpec:
    return embedder_pb2.EncoderSpec(model=path, **kw)


def test_health_is_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for name in (SERVICE_NAME, ""):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_embed_then_hits_and_matches_the_domain_service(stub, server, minilm_path):
    request = embedder_pb2.EmbedRequest(encoder=_spec(minilm_path), texts=TEXTS)
    first = stub.Embed(request, timeout=60)
    vectors = from_proto(first.embeddings)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert first.embeddings.dtype == tensor_pb2.DTYPE_FLOAT32
    assert (first.cache_hits, first.cache_misses) == (0, len(TEXTS))
    second = stub.Embed(request, timeout=60)
    assert (second.cache_hits, second.cache_misses) == (len(TEXTS), 0)
    assert second.fingerprint == first.fingerprint and len(first.fingerprint) == 64
    np.testing.assert_array_equal(from_proto(second.embeddings), vectors)


def test_float16_on_the_wire(stub, minilm_path):
    reply = stub.Embed(
        embedder_pb2.EmbedRequest(
            encoder=_spec(
                minilm_path,
                dtype=tensor_pb2.DTYPE_FLOAT16,
                normalize=True,
                pooling=embedder_pb2.POOLING_CLS,
            ),
            texts=TEXTS[:2],
        ),
        timeout=60,
    )
    assert reply.embeddings.dtype == tensor_pb2.DTYPE_FLOAT16
    vectors = from_proto(reply.embeddings).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)


def test_stream_embed_answers_each_request_in_order(stub, minilm_path):
    batches = [["alpha"], ["beta", "gamma"], ["alpha", "delta", "alpha"]]
    requests = (embedder_pb2.EmbedRequest(encoder=_spec(minilm_path), texts=t) for t in batches)
    replies = list(stub.StreamEmbed(requests, timeout=60))
    assert [from_proto(r.embeddings).shape[0] for r in replies] == [1, 2, 3]
    assert replies[2].cache_hits == 1 and replies[2].cache_misses == 1
    np.testing.assert_array_equal(
        from_proto(replies[2].embeddings)[0], from_proto(replies[0].embeddings)[0]
    )


def test_encoder_info(stub, minilm_path):
    info = stub.GetEncoderInfo(
        embedder_pb2.GetEncoderInfoRequest(encoder=_spec(minilm_path, max_length=128)), timeout=60
    )
    assert (info.dimension, info.model_type, info.max_length, info.device) == (
        384,
        "bert",
        128,
        "cpu",
    )
    reply = stub.Embed(
        embedder_pb2.EmbedRequest(encoder=_spec(minilm_path, max_length=128), texts=["x"]),
        timeout=60,
    )
    assert reply.fingerprint == info.fingerprint


def test_cache_stats(stub, minilm_path):
    before = stub.GetCacheStats(embedder_pb2.GetCacheStatsRequest(), timeout=10)
    stub.Embed(
        embedder_pb2.EmbedRequest(encoder=_spec(minilm_path), texts=["stats one", "and two"]),
        timeout=60,
    )
    stats = stub.GetCacheStats(embedder_pb2.GetCacheStatsRequest(), timeout=10)
    assert stats.entries >= 1 and stats.misses >= 1 and stats.bytes > 0
    assert stats.map_size >= 1 << 30
    # Two texts of 4 tokens each with [CLS] and [SEP], in one forward pass.
    assert stats.computed_texts - before.computed_texts == 2
    assert stats.computed_tokens - before.computed_tokens == 8
    assert stats.forward_passes - before.forward_passes == 1


@pytest.mark.parametrize(
    "request_, field",
    [
        (
            embedder_pb2.EmbedRequest(encoder=embedder_pb2.EncoderSpec(model=""), texts=["a"]),
            "encoder.model",
        ),
        (
            embedder_pb2.EmbedRequest(
                encoder=embedder_pb2.EncoderSpec(model="/no/such/dir", max_length=-3), texts=["a"]
            ),
            "encoder.max_length",
        ),
        (
            embedder_pb2.EmbedRequest(
                encoder=embedder_pb2.EncoderSpec(
                    model="/no/such/dir", dtype=tensor_pb2.DTYPE_INT64
                ),
                texts=["a"],
            ),
            "encoder.dtype",
        ),
        (
            embedder_pb2.EmbedRequest(
                encoder=embedder_pb2.EncoderSpec(model="/no/such/dir"), texts=["a"] * 9
            ),
            "texts",
        ),
        (
            embedder_pb2.EmbedRequest(
                encoder=embedder_pb2.EncoderSpec(
                    model="/no/such/dir", instruction="é" * (4 << 10) + "a"
                ),
                texts=["a"],
            ),
            "encoder.instruction",
        ),  # 8 KiB + 1
        (
            embedder_pb2.EmbedRequest(
                encoder=embedder_pb2.EncoderSpec(model="/no/such/dir"),
                texts=["a", "é" * (1 << 19) + "a"],
            ),
            "texts[1]",
        ),  # 1 MiB + 1
        (
            embedder_pb2.EmbedRequest(
                encoder=embedder_pb2.EncoderSpec(model="/no/such/dir"),
                texts=["a"],
                joined=embedder_pb2.JoinedTexts(utf8=b"b", count=1),
            ),
            "joined",
        ),
        (
            embedder_pb2.EmbedRequest(
                encoder=embedder_pb2.EncoderSpec(model="/no/such/dir"),
                joined=embedder_pb2.JoinedTexts(utf8=b"\0" * 8, count=9),
            ),
            "joined.count",
        ),
        (
            embedder_pb2.EmbedRequest(
                encoder=embedder_pb2.EncoderSpec(model="/no/such/dir"),
                joined=embedder_pb2.JoinedTexts(
                    utf8=b"a\0" + "é".encode() * (1 << 19) + b"a", count=2
                ),
            ),
            "joined.utf8",
        ),
    ],
)
def test_bad_request_is_invalid_argument_with_field(stub, request_, field):
    with pytest.raises(grpc.RpcError) as exc:
        stub.Embed(request_, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = from_rpc_error(exc.value)
    assert err.field == field and err.reason == "INVALID_ARGUMENT"


def test_missing_model_is_not_found_with_field(stub):
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetEncoderInfo(
            embedder_pb2.GetEncoderInfoRequest(
                encoder=embedder_pb2.EncoderSpec(model="/no/such/dir")
            ),
            timeout=10,
        )
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    err = from_rpc_error(exc.value)
    assert err.field == "encoder.model" and "does not exist" in err.message
    assert "Traceback" not in exc.value.details()


def test_failed_preload_raises_and_releases_the_port(tmp_path):
    from tunewire.errors import NotFound

    with pytest.raises(NotFound):
        start(Settings(port=0, data_dir=tmp_path, preload=["/no/such/model"]))
    # The cache was closed: it can be opened again in this process.
    from services.embedder.cache import EmbeddingCache, cache_path

    EmbeddingCache(cache_path(tmp_path)).close()


def test_joined_texts_are_answered_as_their_records(stub, server, minilm_path):
    """`joined` (texts joined by NUL) and `texts` (a record each) name the same texts."""
    texts = ["joined one", "", "naïve café ☕", "joined one", "zwei"]
    spec = _spec(minilm_path, dtype=tensor_pb2.DTYPE_FLOAT16)
    records = stub.Embed(embedder_pb2.EmbedRequest(encoder=spec, texts=texts), timeout=60)
    joined = stub.Embed(
        embedder_pb2.EmbedRequest(
            encoder=spec,
            joined=embedder_pb2.JoinedTexts(utf8="\0".join(texts).encode(), count=len(texts)),
        ),
        timeout=60,
    )
    assert from_proto(joined.embeddings).shape == (len(texts), 384)
    assert joined.embeddings.data == records.embeddings.data
    assert (joined.cache_hits, joined.cache_misses) == (4, 0)  # distinct texts, all cached
    one_empty = stub.Embed(
        embedder_pb2.EmbedRequest(encoder=spec, joined=embedder_pb2.JoinedTexts(utf8=b"", count=1)),
        timeout=60,
    )
    assert from_proto(one_empty.embeddings).tobytes() == from_proto(records.embeddings)[1].tobytes()


@pytest.mark.parametrize(
    "utf8, count, field, words",
    [
        (b"fine\0bad \xff byte", 2, "joined.utf8", "byte 9"),
        (b"a\0b", 3, "joined.count", "holds 2"),
        (b"a\0b", 1, "joined.count", "holds 2"),
        (b"", 2, "joined.count", "holds 1"),
        (b"a", 0, "joined.count", "holds 1"),
    ],
)
def test_bad_joined_texts_are_refused_and_nothing_is_cached(
    stub, server, minilm_path, utf8, count, field, words
):
    entries = server.service.cache_stats().entries
    with pytest.raises(grpc.RpcError) as exc:
        stub.Embed(
            embedder_pb2.EmbedRequest(
                encoder=_spec(minilm_path), joined=embedder_pb2.JoinedTexts(utf8=utf8, count=count)
            ),
            timeout=60,
        )
    err = from_rpc_error(exc.value)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.field == field and words in err.message
    assert server.service.cache_stats().entries == entries


def test_the_sdk_sends_texts_holding_a_nul_as_records(server, minilm_path):
    from clients.sdk import EmbedderClient, EncoderSpec
    from tunewire.wire import embed_request

    texts = ["a\0b", "plain"]
    assert list(embed_request(None, texts).texts) == texts
    assert embed_request(None, ["a", "b"]).joined.count == 2
    assert list(embed_request(None, ["\0"]).texts) == ["\0"]  # one text, only a NUL
    only_empty = embed_request(None, [""])
    assert (only_empty.joined.utf8, only_empty.joined.count) == (b"", 1)
    client = EmbedderClient(f"127.0.0.1:{server.port}")
    try:
        with_nul = client.embed(texts, EncoderSpec(minilm_path)).vectors
        apart = client.embed(["a", "b", "plain"], EncoderSpec(minilm_path)).vectors
    finally:
        client.close()
    assert with_nul.shape == (2, 384)
    np.testing.assert_array_equal(with_nul[1], apart[2])
    assert not np.array_equal(with_nul[0], apart[0])  # "a\0b" is one text, not "a"


def test_the_sdk_refuses_an_answer_with_too_few_vectors():
    """A server that predates `joined` reads a joined request as no texts: the SDK says so
    instead of returning no vectors."""
    from concurrent import futures

    from clients.sdk import EmbedderClient, EncoderSpec
    from tunewire.errors import TunewireError

    def embed(request, context):
        return embedder_pb2.EmbedResponse(
            embeddings=tensor_pb2.Tensor(
                dtype=tensor_pb2.DTYPE_FLOAT32,
                shape=[len(request.texts), 4],
                data=b"\0" * 16 * len(request.texts),
            ),
            last=True,
        )

    def stream_embed(requests, context):
        for request in requests:
            yield embed(request, context)

    codec = dict(
        request_deserializer=embedder_pb2.EmbedRequest.FromString,
        response_serializer=embedder_pb2.EmbedResponse.SerializeToString,
    )
    old = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    old.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "tunewire.v1.EmbedderService",
                {
                    "Embed": grpc.unary_unary_rpc_method_handler(embed, **codec),
                    "StreamEmbed": grpc.stream_stream_rpc_method_handler(stream_embed, **codec),
                },
            )
        ]
    )
    port = old.add_insecure_port("127.0.0.1:0")
    old.start()
    client = EmbedderClient(f"127.0.0.1:{port}")
    try:
        assert client.embed(["a\0b"], EncoderSpec("m")).vectors.shape == (1, 4)  # records
        with pytest.raises(TunewireError) as exc:
            client.embed(["a", "b"], EncoderSpec("m"))
        assert exc.value.reason == "INCOMPLETE_ANSWER" and "0 vectors for 2 texts" in str(exc.value)
        assert (
            len(client.embed_many(["a\0b", "c\0d", "e\0f"], EncoderSpec("m"), batch_size=2).vectors)
            == 3
        )  # records, two requests
        with pytest.raises(TunewireError) as exc:
            client.embed_many(["a", "b", "c"], EncoderSpec("m"), batch_size=2)
        assert exc.value.reason == "INCOMPLETE_ANSWER" and "0 vectors for 2 texts" in str(exc.value)
    finally:
        client.close()
        old.stop(None)


def test_write_behind_answers_the_same_vectors_and_caches_them_after(
    server, minilm_path, monkeypatch
):
    from clients.sdk import EmbedderClient, EncoderSpec

    cache = server.service.cache
    writes: list[str] = []
    for name in ("put_many", "put_many_later"):
        real = getattr(cache, name)

        def record(items, real=real, name=name):
            if threading.current_thread().name != "cache-writer":  # the request's own thread
                writes.append(name)
            return real(items)

        monkeypatch.setattr(cache, name, record)
    texts = ["written behind one", "written behind two"]
    durable = ["written at once one", "written at once two"]
    client = EmbedderClient(f"127.0.0.1:{server.port}")
    entries = cache.stats().entries
    try:
        behind = client.embed(texts, EncoderSpec(minilm_path), write_behind=True)
        assert writes == ["put_many_later"]  # the answer did not wait for a commit
        at_once = client.embed(durable, EncoderSpec(minilm_path))
        assert writes == ["put_many_later", "put_many"]  # the default: durable when answered
        assert behind.cache_misses == 2 and at_once.cache_misses == 2
        cache.flush()  # the writer thread's commit
        assert cache.stats().entries == entries + 4
        again = client.embed(texts, EncoderSpec(minilm_path))
    finally:
        client.close()
    assert again.cache_hits == 2 and again.cache_misses == 0
    np.testing.assert_array_equal(again.vectors, behind.vectors)
