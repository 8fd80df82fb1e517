"""Many clients at once over real gRPC: shared batches, texts computed once, streamed chunks,
and work for clients that went away dropped."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from clients.sdk import EmbedderClient
from clients.sdk import EncoderSpec as SdkSpec
from services.embedder.app import Settings, start
from services.embedder.cache import EmbeddingCache
from services.embedder.inflight import InFlight
from services.embedder.service import EmbedderService, EncoderSpec
from services.embedder.servicer import encode_response
from tests.embedder.conftest import WORDS, rel_error, served
from tunewire.errors import Cancelled
from tunewire.server import channel_options
from tunewire.tensors import from_proto
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc

POOL = [f"{a} {b} and {c}" for a, b, c in zip(WORDS, WORDS[3:] + WORDS[:3], WORDS[7:] + WORDS[:7])]


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def app(tmp_path, minilm_path):
    app = start(Settings(port=0, data_dir=tmp_path / "data", preload=[minilm_path], device="cpu"))
    yield app
    app.stop()


def test_sixteen_clients_with_overlapping_texts_get_the_vectors_of_one_client_alone(
    app, tmp_path, registry, minilm_path
):
    alone_service = EmbedderService(EmbeddingCache(tmp_path / "alone"), registry=registry)
    try:
        alone = dict(zip(POOL, alone_service.embed(EncoderSpec(model=minilm_path), POOL).vectors))
    finally:
        alone_service.close()
    # Client i streams 8 texts starting at i: neighbours share 7 of them.
    subsets = [[POOL[(i + j) % len(POOL)] for j in range(8)] for i in range(16)]
    distinct = set().union(*map(set, subsets))
    address = f"127.0.0.1:{app.port}"
    encoder = app.service.registry.get(minilm_path).encoder
    queue = app.service.registry.get(minilm_path).queue
    results: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        sdk = EmbedderClient(address)
        try:
            results[i] = sdk.embed_many(subsets[i], SdkSpec(minilm_path), batch_size=3).vectors
        finally:
            sdk.close()

    with ThreadPoolExecutor(16) as pool:
        with encoder.lock:  # the model is busy: all 16 streams queue their texts behind it
            futures = [pool.submit(client, i) for i in range(16)]
            _wait_for(lambda: queue.pending_rows >= 8)
        for f in futures:
            f.result(timeout=120)

    for i, subset in enumerate(subsets):
        expected = np.stack([alone[t] for t in subset])
        assert results[i].shape == (8, 384)
        assert rel_error(results[i], expected) < 1e-5
    stub = embedder_pb2_grpc.EmbedderServiceStub(grpc.insecure_channel(address))
    stats = stub.GetCacheStats(embedder_pb2.GetCacheStatsRequest(), timeout=10)
    # Each distinct text went through the model once, however many clients asked for it.
    assert stats.computed_texts == len(distinct) == app.service.counters().computed_texts
    assert 1 <= stats.shared_batches <= stats.forward_passes
    assert stats.entries >= len(distinct)


def test_a_large_request_streams_back_in_chunks(tmp_path, registry, minilm_path):
    # Chunks of two float32 vectors.
    with served(tmp_path / "c", registry, chunk_bytes=384 * 4 * 2) as (service, address):
        with grpc.insecure_channel(address, options=channel_options()) as channel:
            stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
            spec = embedder_pb2.EncoderSpec(model=minilm_path)
            texts = POOL[:5]
            replies = list(
                stub.StreamEmbed(
                    iter(
                        [
                            embedder_pb2.EmbedRequest(encoder=spec, texts=texts),
                            embedder_pb2.EmbedRequest(encoder=spec, texts=texts[:1]),
                        ]
                    ),
                    timeout=60,
                )
            )
        assert [(r.offset, from_proto(r.embeddings).shape[0], r.last) for r in replies] == [
            (0, 2, False),
            (2, 2, False),
            (4, 1, True),
            (0, 1, True),
        ]
        assert (replies[0].cache_misses, replies[1].cache_misses, replies[3].cache_hits) == (
            5,
            0,
            1,
        )
        whole = service.embed(EncoderSpec(model=minilm_path), texts).vectors
        np.testing.assert_array_equal(
            np.concatenate([from_proto(r.embeddings) for r in replies[:3]]), whole
        )
        sdk = EmbedderClient(address)  # the SDK reassembles split answers
        try:
            result = sdk.embed_many(texts + texts[:2], SdkSpec(minilm_path), batch_size=7)
        finally:
            sdk.close()
    assert result.cache_hits == 5 and result.cache_misses == 0
    np.testing.assert_array_equal(result.vectors[:5], whole)


def test_replays_served_from_the_memory_map_are_bit_identical(tmp_path, registry, minilm_path):
    """Computed, then text by text from the cache, then whole answers encoded inside the read
    transaction: the same chunks, and the SDK's views hold what protobuf parses."""
    from services.embedder.service import BATCH_ENTRY_MIN_TEXTS

    texts = [f"{w} number {i}" for i, w in enumerate(WORDS * 3)][: BATCH_ENTRY_MIN_TEXTS + 6]
    # Chunks of 30 float16 vectors.
    with served(tmp_path / "c", registry, chunk_bytes=384 * 2 * 30) as (service, address):
        sdk = EmbedderClient(address)
        try:
            spec = SdkSpec(minilm_path, dtype="float16")
            runs = [list(sdk.stream(texts, spec, batch_size=len(texts))) for _ in range(3)]
            with grpc.insecure_channel(address, options=channel_options()) as channel:
                parsed = list(
                    embedder_pb2_grpc.EmbedderServiceStub(channel).StreamEmbed(
                        iter([embedder_pb2.EmbedRequest(encoder=spec.to_proto(), texts=texts)]),
                        timeout=60,
                    )
                )
        finally:
            sdk.close()
    assert [(c.offset, len(c.vectors), c.last) for c in runs[0]] == [
        (0, 30, False),
        (30, 30, False),
        (60, 10, True),
    ]
    assert [c.cache_misses for c in runs[0]] == [70, 0, 0]
    assert [c.cache_hits for c in runs[1]] == [c.cache_hits for c in runs[2]] == [70, 0, 0]
    assert service.counters().computed_texts == 70
    for run in runs[1:]:
        assert [(c.offset, c.last, c.vectors.tobytes()) for c in run] == [
            (c.offset, c.last, c.vectors.tobytes()) for c in runs[0]
        ]
    assert [(r.offset, r.last, r.embeddings.data) for r in parsed] == [
        (c.offset, c.last, c.vectors.tobytes()) for c in runs[0]
    ]


def test_a_replay_is_found_whole_by_its_wire_bytes_and_no_layout_fools_it(
    tmp_path, registry, minilm_path, monkeypatch
):
    """A request stored whole by the service is found by the servicer from the request's bytes
    (no per-text lookups); requests laid out otherwise still get their own texts' vectors."""
    from services.embedder.hot_vectors import HotVectors
    from services.embedder.service import BATCH_ENTRY_MIN_TEXTS

    with served(tmp_path / "c", registry) as (service, address):
        service.hot_vectors = HotVectors(0)  # text by text from the map: the lookups counted
        texts = [f"{w} wire {i}" for i, w in enumerate(WORDS * 3)][:BATCH_ENTRY_MIN_TEXTS]
        spec = SdkSpec(minilm_path, dtype="float16")
        domain = EncoderSpec(model=minilm_path, dtype="float16")
        service.embed(domain, texts)  # computed
        expected = service.embed(domain, texts).vectors  # all hits: stored whole
        normalized = service.embed(
            EncoderSpec(model=minilm_path, dtype="float16", normalize=True), texts
        ).vectors
        lookups = []
        get_matrix = service.cache.get_matrix
        monkeypatch.setattr(
            service.cache,
            "get_matrix",
            lambda keys, *a: lookups.append(len(keys)) or get_matrix(keys, *a),
        )

        def encoder(**kw) -> bytes:
            return embedder_pb2.EmbedRequest(
                encoder=SdkSpec(minilm_path, **kw).to_proto()
            ).SerializeToString()

        body = embedder_pb2.EmbedRequest(texts=texts).SerializeToString()
        layouts = {
            "texts first": body + encoder(dtype="float16"),
            "a second encoder after the texts": encoder(dtype="float16")
            + body
            + encoder(dtype="float16", normalize=True),
            "texts then an unknown field": encoder(dtype="float16") + body + b"\x78\x01",
        }
        sdk = EmbedderClient(address)
        try:
            whole = [c.vectors for c in sdk.stream(texts, spec, batch_size=len(texts))]
            assert lookups == []  # one read of the whole answer
            with grpc.insecure_channel(address, options=channel_options()) as channel:
                call = channel.stream_stream("/tunewire.v1.EmbedderService/StreamEmbed")
                # One call per request: in one stream the second could begin before the first
                # stored its answer whole.
                answers = {
                    name: [
                        embedder_pb2.EmbedResponse.FromString(r)
                        for _ in range(2)
                        for r in call(iter([raw]), timeout=60)
                    ]
                    for name, raw in layouts.items()
                }
        finally:
            sdk.close()
    assert len(whole) == 1 and whole[0].tobytes() == expected.tobytes()
    assert lookups == [len(texts)] * 3  # each layout's first request: text by text
    for name, (first, again) in answers.items():
        want = normalized if "second encoder" in name else expected
        assert from_proto(first.embeddings).tobytes() == want.tobytes(), name
        assert from_proto(again.embeddings).tobytes() == want.tobytes(), name


def test_replays_then_new_texts_in_one_stream_are_answered_in_order(
    tmp_path, registry, minilm_path
):
    """Replays (answered at `begin`), a request the model computes and an invalid one in one
    stream: each answered in request order, the error in its place."""
    from services.embedder.service import BATCH_ENTRY_MIN_TEXTS

    first, second = (
        [f"{w} replay {b} {i}" for i, w in enumerate(WORDS * 3)][:BATCH_ENTRY_MIN_TEXTS]
        for b in range(2)
    )
    fresh = [f"{w} fresh {i}" for i, w in enumerate(WORDS)]
    with served(tmp_path / "c", registry) as (service, address):
        domain = EncoderSpec(model=minilm_path, dtype="float16")
        stored = {}
        for texts in (first, second):
            service.embed(domain, texts)
            stored[texts[0]] = service.embed(domain, texts).vectors  # all hits: stored whole
        spec = SdkSpec(minilm_path, dtype="float16").to_proto()

        def request(texts, model_spec=spec):
            return embedder_pb2.EmbedRequest(encoder=model_spec, texts=texts)

        bad = request(["x"], embedder_pb2.EncoderSpec(model=" "))
        with grpc.insecure_channel(address, options=channel_options()) as channel:
            stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
            replies = list(
                stub.StreamEmbed(
                    iter([request(first), request(second), request(fresh), request(first)]),
                    timeout=60,
                )
            )
            with pytest.raises(grpc.RpcError) as at_once:
                list(stub.StreamEmbed(iter([bad, request(first)]), timeout=60))
            got = []
            with pytest.raises(grpc.RpcError) as later:
                for reply in stub.StreamEmbed(
                    iter([request(first), bad, request(second)]), timeout=60
                ):
                    got.append(reply)
        fresh_vectors = service.embed(domain, fresh).vectors
    vectors = [from_proto(r.embeddings) for r in replies]
    assert [v.tobytes() for v in vectors] == [
        stored[first[0]].tobytes(),
        stored[second[0]].tobytes(),
        fresh_vectors.tobytes(),
        stored[first[0]].tobytes(),
    ]
    assert [r.cache_misses for r in replies] == [0, 0, len(fresh), 0]
    for error in (at_once.value, later.value):
        assert (
            error.code() == grpc.StatusCode.INVALID_ARGUMENT and "encoder.model" in error.details()
        )
    assert [from_proto(r.embeddings).tobytes() for r in got] == [stored[first[0]].tobytes()]


def test_a_client_that_went_away_has_its_queued_texts_dropped(app, minilm_path):
    encoder = app.service.registry.get(minilm_path).encoder
    queue = app.service.registry.get(minilm_path).queue
    before = app.service.counters()
    with grpc.insecure_channel(f"127.0.0.1:{app.port}", options=channel_options()) as channel:
        stub = embedder_pb2_grpc.EmbedderServiceStub(channel)
        with encoder.lock:
            responses = stub.StreamEmbed(
                iter(
                    [
                        embedder_pb2.EmbedRequest(
                            encoder=embedder_pb2.EncoderSpec(model=minilm_path),
                            texts=["never computed one", "never computed two"],
                        )
                    ]
                ),
                timeout=60,
            )
            codes = []

            def consume() -> None:
                try:
                    list(responses)
                except grpc.RpcError as exc:
                    codes.append(exc.code())

            consumer = threading.Thread(target=consume, daemon=True)
            consumer.start()
            _wait_for(lambda: queue.pending_rows == 2)
            responses.cancel()
            consumer.join(10)
            assert codes == [grpc.StatusCode.CANCELLED]
            # The client knows at once; the server once the cancel reaches it (under load, later
            # than the client's join): until then its rows are still wanted.
            _wait_for(lambda: all(row.request.cancelled() for row in queue._rows))
        _wait_for(lambda: app.service.counters().dropped_texts == before.dropped_texts + 2)
    after = app.service.counters()
    assert after.computed_texts == before.computed_texts
    assert after.forward_passes == before.forward_passes
    assert queue.pending_rows == 0


def test_cancelled_caller_at_the_service_raises_and_computes_nothing(service, minilm_path):
    entry = service.registry.get(minilm_path)
    entry.encoder.load()  # a first load takes the lock this test holds
    gone = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        with entry.encoder.lock:
            future = pool.submit(
                service.embed, EncoderSpec(model=minilm_path), ["left early"], gone.is_set
            )
            _wait_for(lambda: entry.queue.pending_rows == 1)
            gone.set()
        with pytest.raises(Cancelled):
            future.result(timeout=30)
    assert service.computed_texts == 0 and entry.queue.pending_rows == 0
    # Nothing stays claimed: the same text is computed for the next caller.
    assert service.embed(EncoderSpec(model=minilm_path), ["left early"]).misses == 1


def test_a_text_in_flight_is_waited_for_not_computed_again(service, minilm_path):
    entry = service.registry.get(minilm_path)
    entry.encoder.load()  # a first load takes the lock this test holds
    with ThreadPoolExecutor(2) as pool:
        with entry.encoder.lock:
            first = pool.submit(service.embed, EncoderSpec(model=minilm_path), POOL[:3])
            _wait_for(lambda: entry.queue.pending_rows == 3)
            second = pool.submit(service.embed, EncoderSpec(model=minilm_path), POOL[1:4])
            _wait_for(lambda: entry.queue.pending_rows == 4)  # only POOL[3] is new
        a, b = first.result(timeout=60), second.result(timeout=60)
    assert (a.misses, b.misses, b.hits) == (3, 1, 2)
    assert service.computed_texts == 4
    np.testing.assert_array_equal(a.vectors[1:], b.vectors[:2])


def test_inflight_owner_giving_up_leaves_waiters_to_compute():
    inflight = InFlight()
    owned, waiting = inflight.claim([b"k1", b"k2"])
    assert owned == [0, 1] and waiting == []
    owned2, waiting2 = inflight.claim([b"k2", b"k3"])
    assert owned2 == [1] and [i for i, _ in waiting2] == [0]
    inflight.release([b"k1", b"k2"], None)  # the owner failed
    assert waiting2[0][1].wait(lambda: False) is None
    inflight.release([b"k3"], np.ones((1, 4), np.float32))
    assert len(inflight) == 0


@pytest.mark.parametrize("dtype, rows", [(np.float32, 3), (np.float16, 300), (np.float16, 0)])
def test_encoded_response_parses_as_the_message_it_stands_for(dtype, rows):
    vectors = np.arange(rows * 48, dtype=dtype).reshape(rows, 48)
    fields = dict(cache_hits=3, cache_misses=1, fingerprint="ab" * 32, offset=7, last=True)
    parsed = embedder_pb2.EmbedResponse.FromString(encode_response(vectors, **fields))
    from tunewire.tensors import to_proto

    assert parsed == embedder_pb2.EmbedResponse(embeddings=to_proto(vectors), **fields)
    np.testing.assert_array_equal(from_proto(parsed.embeddings), vectors)
