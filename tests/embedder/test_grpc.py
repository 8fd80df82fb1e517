"""The embedder over real gRPC on loopback: every RPC, health, and rich errors."""

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
    app = start(Settings(port=0, data_dir=tmp_path_factory.mktemp("data"),
                         preload=[minilm_path], max_texts=8, device="cpu"))
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
    reply = stub.Embed(embedder_pb2.EmbedRequest(
        encoder=_spec(minilm_path, dtype=tensor_pb2.DTYPE_FLOAT16, normalize=True,
                      pooling=embedder_pb2.POOLING_CLS), texts=TEXTS[:2]), timeout=60)
    assert reply.embeddings.dtype == tensor_pb2.DTYPE_FLOAT16
    vectors = from_proto(reply.embeddings).astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)


def test_stream_embed_answers_each_request_in_order(stub, minilm_path):
    batches = [["alpha"], ["beta", "gamma"], ["alpha", "delta", "alpha"]]
    requests = (embedder_pb2.EmbedRequest(encoder=_spec(minilm_path), texts=t) for t in batches)
    replies = list(stub.StreamEmbed(requests, timeout=60))
    assert [from_proto(r.embeddings).shape[0] for r in replies] == [1, 2, 3]
    assert replies[2].cache_hits == 1 and replies[2].cache_misses == 1
    np.testing.assert_array_equal(from_proto(replies[2].embeddings)[0],
                                  from_proto(replies[0].embeddings)[0])


def test_encoder_info(stub, minilm_path):
    info = stub.GetEncoderInfo(embedder_pb2.GetEncoderInfoRequest(
        encoder=_spec(minilm_path, max_length=128)), timeout=60)
    assert (info.dimension, info.model_type, info.max_length, info.device) == (
        384, "bert", 128, "cpu")
    reply = stub.Embed(embedder_pb2.EmbedRequest(encoder=_spec(minilm_path, max_length=128),
                                                 texts=["x"]), timeout=60)
    assert reply.fingerprint == info.fingerprint


def test_cache_stats(stub, minilm_path):
    stub.Embed(embedder_pb2.EmbedRequest(encoder=_spec(minilm_path), texts=["stats one"]),
               timeout=60)
    stats = stub.GetCacheStats(embedder_pb2.GetCacheStatsRequest(), timeout=10)
    assert stats.entries >= 1 and stats.misses >= 1 and stats.bytes > 0
    assert stats.map_size >= 1 << 30


@pytest.mark.parametrize("request_, field", [
    (embedder_pb2.EmbedRequest(encoder=embedder_pb2.EncoderSpec(model=""), texts=["a"]),
     "encoder.model"),
    (embedder_pb2.EmbedRequest(encoder=embedder_pb2.EncoderSpec(
        model="/no/such/dir", max_length=-3), texts=["a"]), "encoder.max_length"),
    (embedder_pb2.EmbedRequest(encoder=embedder_pb2.EncoderSpec(
        model="/no/such/dir", dtype=tensor_pb2.DTYPE_INT64), texts=["a"]), "encoder.dtype"),
    (embedder_pb2.EmbedRequest(encoder=embedder_pb2.EncoderSpec(model="/no/such/dir"),
                               texts=["a"] * 9), "texts"),
    (embedder_pb2.EmbedRequest(encoder=embedder_pb2.EncoderSpec(model="/no/such/dir"),
                               texts=["a", "é" * (1 << 19) + "a"]), "texts[1]"),  # 1 MiB + 1
])
def test_bad_request_is_invalid_argument_with_field(stub, request_, field):
    with pytest.raises(grpc.RpcError) as exc:
        stub.Embed(request_, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = from_rpc_error(exc.value)
    assert err.field == field and err.reason == "INVALID_ARGUMENT"


def test_missing_model_is_not_found_with_field(stub):
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetEncoderInfo(embedder_pb2.GetEncoderInfoRequest(
            encoder=embedder_pb2.EncoderSpec(model="/no/such/dir")), timeout=10)
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
