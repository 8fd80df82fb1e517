"""Whole answers kept in memory as sent: the byte budget, what is kept, and replays over gRPC
that stay exact (the same bytes as from the map, counted as hits, never stale)."""

import shutil

import pytest

from clients.sdk import EmbedderClient
from clients.sdk import EncoderSpec as SdkSpec
from services.embedder import service as service_module
from services.embedder.app import Settings
from services.embedder.fingerprint import encode_texts
from services.embedder.hot_answers import HotAnswers, rendered_size
from services.embedder.hot_vectors import HotVectors
from tests.embedder.conftest import WORDS, served


def test_least_recently_used_answers_leave_first_within_the_byte_budget():
    hot = HotAnswers(max_bytes=10)
    hot.put("a", [b"123", b"4"], distinct=2)
    hot.put("b", b"56789", distinct=5)
    assert hot.get("a").rendered == [b"123", b"4"]  # now the most recently used
    hot.put("c", b"xy", distinct=1)  # 4 + 5 + 2 > 10: "b" goes
    assert hot.get("b") is None and hot.get("a").distinct == 2 and hot.get("c") is not None
    assert hot.size_bytes == 6 and len(hot) == 2
    hot.put("a", b"z", distinct=1)  # replaced, not counted twice
    assert hot.size_bytes == 3
    hot.put("big", b"x" * 11, distinct=1)  # over the whole budget: not kept, nothing evicted
    assert hot.get("big") is None and len(hot) == 2
    hot.put("keyed", b"x" * 5, distinct=1, key_bytes=6)  # 11 with its key: not kept either
    assert hot.get("keyed") is None and hot.size_bytes == 3


class CountedKey(str):
    """A key that counts how often it is hashed."""

    hashed = 0

    def __hash__(self):
        CountedKey.hashed += 1
        return super().__hash__()


def test_a_key_whose_sketch_no_answer_has_is_not_hashed():
    hot = HotAnswers(max_bytes=10)
    hot.put("a", b"12", distinct=1, sketch="s")
    hot.put("b", b"34", distinct=1, sketch="s")  # one sketch, two answers
    assert hot.get(CountedKey("zz"), sketch="t") is None and CountedKey.hashed == 0
    assert hot.get("a", sketch="s").rendered == b"12"
    assert hot.get(CountedKey("zz"), sketch="s") is None and CountedKey.hashed == 1
    hot.put("c", b"56789xyzw", distinct=1, sketch="u")  # both "a" and "b" go
    assert hot.get("b", sketch="s") is None and hot._sketches == {"u": 1}
    hot.put("c", b"5", distinct=1, sketch="v")  # replaced: its old sketch goes with it
    assert hot._sketches == {"v": 1} and hot.get("c", sketch="v").rendered == b"5"


def test_only_answers_made_of_bytes_are_kept():
    hot = HotAnswers(max_bytes=1 << 20)
    hot.put("array", object(), distinct=1)
    hot.put("mixed", [b"ok", bytearray(b"mutable")], distinct=1)
    assert len(hot) == 0
    assert rendered_size([b"ab", b"c"]) == 3 and rendered_size(b"abcd") == 4
    nothing = HotAnswers(0)
    nothing.put("a", b"x", distinct=1)
    assert len(nothing) == 0 and nothing.size_bytes == 0
    with pytest.raises(ValueError):
        HotAnswers(-1)


def test_replays_from_memory_are_exact_counted_and_follow_the_model_on_disk(
    tmp_path, registry, minilm_path, monkeypatch
):
    from services.embedder.service import BATCH_ENTRY_MIN_TEXTS

    model = tmp_path / "model"
    shutil.copytree(minilm_path, model)
    texts = [f"{w} hot {i}" for i, w in enumerate(WORDS * 3)][:BATCH_ENTRY_MIN_TEXTS]
    spec = SdkSpec(str(model), dtype="float16")
    with served(tmp_path / "c", registry, chunk_bytes=384 * 2 * 30) as (service, address):
        service.hot_vectors = HotVectors(0)  # text-by-text reads from the map (test_hot_vectors)
        sdk = EmbedderClient(address)
        try:

            def stream():
                chunks = list(sdk.stream(texts, spec, batch_size=len(texts)))
                return [c.vectors.tobytes() for c in chunks], chunks[0].cache_hits

            computed, _ = stream()  # computed
            stream()  # all hits, text by text: stored whole
            assert len(service.hot) == 0
            from_map, hits_map = stream()  # the whole answer, rendered from the map
            assert len(service.hot) == 1
            # The budget counts the answer (its vectors and a few header bytes a chunk) and the
            # texts' bytes its key holds.
            headers = service.hot.size_bytes - sum(map(len, from_map)) - len(encode_texts(texts))
            assert 0 < headers < 200 * len(from_map)
            hits_before = service.cache.stats().hits
            with monkeypatch.context() as patch:  # no read of the map this time
                patch.setattr(service.cache, "read_batch", lambda *a: pytest.fail("map read"))
                from_memory, hits_memory = stream()  # the same bytes objects again
            assert service.cache.stats().hits == hits_before + len(texts)
            assert from_map == from_memory == computed and hits_map == hits_memory == len(texts)

            config = model / "config.json"
            config.write_text(
                config.read_text().replace(
                    '"hidden_dropout_prob": 0.1', '"hidden_dropout_prob": 0.2'
                )
            )
            monkeypatch.setattr(service_module, "SIGNATURE_CHECK_SECONDS", 0.0)
            changed = list(sdk.stream(texts, spec, batch_size=len(texts)))
        finally:
            sdk.close()
    # A new fingerprint: nothing kept under the old one answers for the changed model.
    assert changed[0].cache_misses == len(texts) and changed[0].fingerprint != ""


def test_a_zero_budget_keeps_nothing(tmp_path, registry, minilm_path):
    from services.embedder.cache import EmbeddingCache
    from services.embedder.service import BATCH_ENTRY_MIN_TEXTS, EmbedderService

    service = EmbedderService(EmbeddingCache(tmp_path / "c"), registry=registry, hot_answer_bytes=0)
    try:
        texts = [f"{w} cold {i}" for i, w in enumerate(WORDS * 3)][:BATCH_ENTRY_MIN_TEXTS]
        spec = service_module.EncoderSpec(model=minilm_path)
        for _ in range(3):
            service.begin(spec, texts, lambda result: [result.vectors.tobytes()]).finish()
        assert len(service.hot) == 0
    finally:
        service.close()
    with pytest.raises(ValueError):
        Settings(hot_answer_bytes=-1)
