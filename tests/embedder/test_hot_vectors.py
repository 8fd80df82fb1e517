"""Vectors kept in memory by text: the ring's first-in first-out order and byte budget, lookups
exact whatever the hashes say, and text-by-text requests answered from it exactly (no cache
read), counted as hits, never stale."""

import numpy as np
import pytest

from services.embedder import hot_vectors as hot_vectors_module
from services.embedder import service as service_module
from services.embedder.cache import EmbeddingCache
from services.embedder.hot_vectors import (
    _ENTRY_OVERHEAD,
    _PLANNED_TEXT_BYTES,
    HotVectors,
    text_hashes,
)
from tests.embedder.conftest import WORDS


def rows(n: int, dim: int = 4, start: int = 0) -> np.ndarray:
    return np.arange(start * dim, (start + n) * dim, dtype=np.float16).reshape(n, dim)


def test_every_text_or_none_in_request_order_duplicates_included():
    hot = HotVectors(1 << 20)
    hot.put("fp", ["a", "b", "c"], rows(3))
    got = hot.get("fp", ["c", "a", "c"])
    np.testing.assert_array_equal(got.vectors, rows(3)[[2, 0, 2]])
    assert got.distinct == 2
    got.vectors[:] = 7  # a new array: what is kept does not change
    np.testing.assert_array_equal(hot.get("fp", ["a"]).vectors, rows(1))
    assert hot.get("fp", ["a", "zzz"]) is None  # one text missing: nothing
    assert hot.get("other fingerprint", ["a"]) is None
    assert hot.get("fp", []).vectors.shape == (0, 4)
    # As a server reads them: joined by NUL, with their count (which must match).
    np.testing.assert_array_equal(hot.lookup("fp", b"b\0a", 2).vectors, rows(3)[[1, 0]])
    assert hot.lookup("fp", b"b\0a", 3) is None and hot.lookup("fp", b"b\0a", 1) is None
    # An event loop's lookup never waits for a put: `BUSY` while the lock is held elsewhere.
    with hot._lock:
        assert (
            hot.answer("fp", b"b", 1, lambda *found: found, wait=False) is hot_vectors_module.BUSY
        )
    assert hot.answer("fp", b"b", 1, lambda m, rows, d: rows.tolist(), wait=False) == [1]


def test_the_oldest_rows_are_overwritten_within_the_budget():
    row_cost = 4 * 2 + _ENTRY_OVERHEAD + _PLANNED_TEXT_BYTES  # the row, the entry, a text
    hot = HotVectors(3 * row_cost)  # three rows
    hot.put("fp", ["a", "b", "a"], rows(3))  # "a" once: its first row
    hot.put("fp", ["c", "d"], rows(2, start=10))  # "d" takes "a"'s row
    assert hot.get("fp", ["a"]) is None and len(hot) == 3
    np.testing.assert_array_equal(
        hot.get("fp", ["b", "c", "d"]).vectors,
        rows(3)[[1]].tolist() + rows(2, start=10).tolist(),
    )
    assert hot.size_bytes <= 3 * row_cost
    hot.put("fp2", ["x", "y", "z"], rows(3))  # another encoder: the least recently used goes
    assert hot.get("fp", ["b"]) is None and hot.get("fp2", ["x"]) is not None
    nothing = HotVectors(0)
    nothing.put("fp", ["a"], rows(1))
    assert nothing.get("fp", ["a"]) is None and len(nothing) == 0
    with pytest.raises(ValueError):
        HotVectors(-1)


def test_long_texts_count_in_the_budget_and_the_oldest_go():
    hot = HotVectors(4 * (8 + _ENTRY_OVERHEAD + _PLANNED_TEXT_BYTES))  # four rows
    hot.put("fp", ["x" * 200, "y" * 200, "z"], rows(3))
    assert hot.size_bytes <= hot.max_bytes
    assert hot.get("fp", ["x" * 200]) is None
    np.testing.assert_array_equal(hot.get("fp", ["y" * 200, "z"]).vectors, rows(3)[1:])


def test_texts_with_a_nul_are_not_kept_and_lookups_stay_exact():
    hot = HotVectors(1 << 20)
    hot.put("fp", ["a\0b", "a", "b", "caf\u00e9"], rows(4))
    assert len(hot) == 3  # "a\0b" would read as two texts joined
    assert hot.get("fp", ["a\0b"]) is None
    np.testing.assert_array_equal(hot.get("fp", ["caf\u00e9", "b"]).vectors, rows(4)[[3, 2]])
    assert hot.get("fp", ["\ud800"]) is None  # not UTF-8: never kept, never found


def test_a_hash_collision_never_answers_for_another_text(monkeypatch):
    """Every text hashes alike here: the first is kept, the others are not, and a lookup of one
    of them finds the first text's row but is refused, because the texts differ."""
    hot = HotVectors(1 << 20)
    monkeypatch.setattr(
        hot_vectors_module,
        "text_hashes",
        lambda joined, count: (
            None if text_hashes(joined, count) is None else np.zeros(count, dtype=np.uint64)
        ),
    )
    hot.put("fp", ["a", "b"], rows(2))
    assert len(hot) == 1
    np.testing.assert_array_equal(hot.get("fp", ["a"]).vectors, rows(1))
    assert hot.get("fp", ["b"]) is None and hot.get("fp", ["a", "b"]) is None


def test_equal_texts_hash_alike_wherever_they_sit():
    first = text_hashes(b"one\0two\0\0one", 4)
    assert first[0] == first[3] and len(set(first.tolist())) == 3
    assert text_hashes("\0".join(["two", "one", ""]).encode(), 3).tolist() == [
        first[1],
        first[0],
        first[2],
    ]
    assert text_hashes(b"ab", 1) != text_hashes(b"ba", 1)
    assert text_hashes(b"", 0).shape == (0,) and text_hashes(b"", 1).shape == (1,)
    assert text_hashes(b"a", 0) is None and text_hashes(b"a\0b", 1) is None


def test_long_buffers_hash_in_pieces_alike(monkeypatch):
    texts = [f"text {i} " + "x" * (i % 7) for i in range(200)] + [""]
    joined = "\0".join(texts).encode()
    whole = text_hashes(joined, len(texts))
    monkeypatch.setattr(hot_vectors_module, "_CACHED_POWERS", 64)  # a piece: a few texts
    assert text_hashes(joined, len(texts)).tolist() == whole.tolist()


def test_text_by_text_requests_are_answered_from_kept_vectors(
    tmp_path, registry, minilm_path, monkeypatch
):
    service = service_module.EmbedderService(EmbeddingCache(tmp_path / "c"), registry=registry)
    try:
        spec = service_module.EncoderSpec(model=minilm_path, dtype="float16")
        texts = [f"{w} kept {i}" for i, w in enumerate(WORDS * 3)][:70]
        computed = service.embed(spec, texts)  # computed, and kept by text
        order = list(reversed(texts)) + texts[:2]  # another request: no whole answer for it
        with monkeypatch.context() as patch:
            patch.setattr(service.cache, "get_matrix", lambda *a: pytest.fail("cache read"))
            patch.setattr(service.cache, "read_batch", lambda *a: pytest.fail("cache read"))
            again = service.embed(spec, order)
        assert (again.hits, again.misses) == (70, 0)
        assert (
            again.vectors.tobytes() == computed.vectors[list(range(69, -1, -1)) + [0, 1]].tobytes()
        )
        assert service.cache.stats().hits == 70
        # One text not kept: the request is read from the cache text by text, as before.
        mixed = service.embed(spec, texts[:3] + ["a text never seen"])
        assert (mixed.hits, mixed.misses) == (3, 1)
        assert mixed.vectors[:3].tobytes() == computed.vectors[:3].tobytes()
        # Another encoder setting is another fingerprint: nothing kept answers for it.
        normalized = service.embed(
            service_module.EncoderSpec(model=minilm_path, dtype="float16", normalize=True),
            texts[:5],
        )
        assert normalized.misses == 5
    finally:
        service.close()


def test_a_render_marked_takes_rows_gathers_kept_rows_itself(tmp_path, registry, minilm_path):
    """A render marked `takes_rows` gets the kept rows and their order (gathered once, by it,
    into what it sends); the servicer's chunks of them are the chunks of the vectors."""
    from services.embedder.servicer import EmbedderServicer

    service = service_module.EmbedderService(EmbeddingCache(tmp_path / "c"), registry=registry)
    try:
        spec = service_module.EncoderSpec(model=minilm_path, dtype="float16")
        texts = [f"{w} rows {i}" for i, w in enumerate(WORDS * 3)][:70]
        computed = service.embed(spec, texts).vectors
        order = [5, 69, 0, 5, 12]
        seen = []

        @service_module.takes_rows
        def render(result):
            seen.append(result.rows is not None)
            return result.gathered()

        got = service.begin(spec, [texts[i] for i in order], render).finish()
        assert seen == [True] and got.rows is None and got.hits == 4
        np.testing.assert_array_equal(got.vectors, computed[order])
        servicer = EmbedderServicer(service, chunk_bytes=2 * computed.shape[1] * 2)
        chunks = service.begin(spec, [texts[i] for i in order], servicer._chunks).finish()
        full = service_module.EmbedResult(computed[order], 4, 0, got.fingerprint)
        assert chunks == servicer._chunks(full) and len(chunks) == 3
    finally:
        service.close()


def test_a_text_by_text_answer_is_kept_as_sent_only_for_a_replay(tmp_path, registry, minilm_path):
    """A request seen before (here computed first) is kept as a hot answer when the kept vectors
    answer it again, so its next replay costs nothing; a request in a new order is not kept
    until it comes a second time."""
    service = service_module.EmbedderService(EmbeddingCache(tmp_path / "c"), registry=registry)
    try:
        spec = service_module.EncoderSpec(model=minilm_path, dtype="float16")
        texts = [f"{w} replayed {i}" for i, w in enumerate(WORDS * 3)][:70]

        def render(result):
            return [result.vectors.tobytes()]

        computed = service.begin(spec, texts, render).finish()
        assert len(service.hot) == 0
        assert service.begin(spec, texts, render).finish() == computed  # kept vectors
        assert len(service.hot) == 1  # a replay: kept as sent
        shuffled = texts[::-1]
        first = service.begin(spec, shuffled, render).finish()
        assert len(service.hot) == 1  # seen once: nothing kept
        assert service.begin(spec, shuffled, render).finish() == first
        assert len(service.hot) == 2
    finally:
        service.close()


def test_a_stream_answers_kept_texts_on_its_loop_and_the_rest_in_a_thread(
    tmp_path, registry, minilm_path, monkeypatch
):
    """Over gRPC: a request whose texts are all kept is answered on the event loop (no worker
    thread begins it), with the same vectors; a request with a text not kept, or one refused,
    still goes the thread's way, with the same answer or error as before."""
    from clients.sdk import EmbedderClient, EncoderSpec
    from services.embedder.servicer import EmbedderServicer
    from tests.embedder.conftest import served
    from tunewire.errors import InvalidArgument

    begun = []
    original = EmbedderServicer._begin

    def counted(self, received, render, memory_checked=False):
        begun.append(memory_checked)
        return original(self, received, render, memory_checked)

    monkeypatch.setattr(EmbedderServicer, "_begin", counted)
    # The model's files checked once a minute here: a slow machine never finds it due, which
    # sends a request the thread's way (where the check is made).
    monkeypatch.setattr(service_module, "SIGNATURE_CHECK_SECONDS", 60.0)
    texts = [f"{w} on the loop {i}" for i, w in enumerate(WORDS * 3)][:70]
    with served(tmp_path / "c", registry) as (service, address):
        client = EmbedderClient(address)
        try:
            spec = EncoderSpec(minilm_path, dtype="float16")
            first = client.embed_many(texts, spec, batch_size=70)
            # Computed in a thread (looked for on the loop only if the encoder was open).
            assert len(begun) == 1 and first.cache_misses == 70
            del begun[:]
            order = texts[::-1]
            again = client.embed_many(order, spec, batch_size=70)
            assert begun == [] and (again.cache_hits, again.cache_misses) == (70, 0)
            np.testing.assert_array_equal(again.vectors, first.vectors[::-1])
            mixed = client.embed_many(texts[:3] + ["never seen on the loop"], spec)
            assert begun == [True] and mixed.cache_misses == 1
            np.testing.assert_array_equal(mixed.vectors[:3], first.vectors[:3])
            assert service.registry.peek(minilm_path) is service.registry.get(minilm_path)
            service.registry.get(minilm_path).checked_at = 0.0  # its files' check is due
            assert service.registry.peek(minilm_path) is None
            assert service.registry.peek("no such model") is None
            # Due for its files' check, the request goes the thread's way, which checks them
            # and still answers from the kept vectors: the cache's file is not read.
            read = []
            with monkeypatch.context() as patch:
                patch.setattr(service.cache, "get_matrix", lambda *a: read.append(a))
                due = client.embed_many(texts[1:] + texts[:1], spec, batch_size=70)
            assert begun == [True, False] and not read
            assert (due.cache_hits, due.cache_misses) == (70, 0)
            np.testing.assert_array_equal(due.vectors, np.roll(first.vectors, -1, axis=0))
            assert service.registry.peek(minilm_path) is not None  # checked by the thread
            with pytest.raises(InvalidArgument) as err:
                client.embed_many(texts, EncoderSpec(minilm_path, max_length=-1))
            assert err.value.field == "encoder.max_length"
        finally:
            client.close()


def test_a_put_behind_the_answer_is_waited_for_by_the_next_lookup(monkeypatch):
    """`put_behind` returns before the rows are copied (on its own thread), holding the lock
    until they are: a lookup meanwhile waits and finds them; an event loop's gets BUSY."""
    import threading

    hot = HotVectors(1 << 20)
    copying, release = threading.Event(), threading.Event()
    real_put = hot_vectors_module._Ring.put
    threads: list[str] = []

    def slow_put(ring, texts, vectors):
        threads.append(threading.current_thread().name)
        copying.set()
        release.wait(5)
        real_put(ring, texts, vectors)

    monkeypatch.setattr(hot_vectors_module._Ring, "put", slow_put)
    hot.put_behind("fp", ["a", "b"], rows(2))  # returns while the rows are not kept yet
    assert copying.wait(5) and threads[0].startswith("hot-vectors")
    assert hot.answer("fp", b"a", 1, lambda m, r, d: m[r], wait=False) is hot_vectors_module.BUSY
    found: list = []
    lookup = threading.Thread(target=lambda: found.append(hot.get("fp", ["b", "a"])))
    lookup.start()
    lookup.join(0.2)
    assert lookup.is_alive()  # waiting for the put, not missing its texts
    release.set()
    lookup.join(5)
    np.testing.assert_array_equal(found[0].vectors, rows(2)[[1, 0]])


def test_pieces_of_a_long_buffer_use_the_kept_power_tables(monkeypatch):
    """Each piece is shorter than the kept tables: none is built again per request."""
    texts = [f"text {i} " + "x" * (i % 7) for i in range(200)]
    joined = "\0".join(texts).encode()
    whole = text_hashes(joined, len(texts))
    monkeypatch.setattr(hot_vectors_module, "_CACHED_POWERS", 64)
    monkeypatch.setattr(hot_vectors_module, "_POWERS", hot_vectors_module._Powers())
    built: list[int] = []
    real = hot_vectors_module._powers
    monkeypatch.setattr(
        hot_vectors_module, "_powers", lambda base, n: built.append(n) or real(base, n)
    )
    assert text_hashes(joined, len(texts)).tolist() == whole.tolist()
    assert max(built) <= 64
    built.clear()
    text_hashes(joined, len(texts))
    assert built == []  # kept


def test_texts_never_seen_are_told_from_the_first_without_hashing_the_rest(monkeypatch):
    hot = HotVectors(1 << 20)
    hot.put("fp", ["a", "b"], rows(2))
    hashed: list[int] = []
    real = hot_vectors_module.text_hashes
    monkeypatch.setattr(
        hot_vectors_module, "text_hashes", lambda j, n: hashed.append(n) or real(j, n)
    )
    assert hot.get("fp", ["new", "a", "b"]) is None
    assert hashed == [1]  # the first text's hash only
    np.testing.assert_array_equal(hot.get("fp", ["b", "a"]).vectors, rows(2)[[1, 0]])
    assert hot.get("fp", ["a", "new"]) is None  # a first text kept: checked in full
