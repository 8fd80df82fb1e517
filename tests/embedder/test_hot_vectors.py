"""Vectors kept in memory by text: the ring's first-in first-out order and byte budget, and
text-by-text requests answered from it exactly (no cache read), counted as hits, never stale."""

import numpy as np
import pytest

from services.embedder import service as service_module
from services.embedder.cache import EmbeddingCache
from services.embedder.hot_vectors import _ENTRY_OVERHEAD, HotVectors
from tests.embedder.conftest import WORDS


def rows(n: int, dim: int = 4, start: int = 0) -> np.ndarray:
    return np.arange(start * dim, (start + n) * dim, dtype=np.float16).reshape(n, dim)


def test_every_text_or_none_in_request_order_duplicates_included():
    hot = HotVectors(1 << 20)
    hot.put("fp", ["a", "b", "c"], rows(3))
    got = hot.get("fp", ["c", "a", "c"])
    np.testing.assert_array_equal(got, rows(3)[[2, 0, 2]])
    got[:] = 7  # a new array: what is kept does not change
    np.testing.assert_array_equal(hot.get("fp", ["a"]), rows(1))
    assert hot.get("fp", ["a", "zzz"]) is None  # one text missing: nothing
    assert hot.get("other fingerprint", ["a"]) is None
    assert hot.get("fp", []).shape == (0, 4)


def test_the_oldest_rows_are_overwritten_within_the_budget():
    row_cost = 4 * 2 + _ENTRY_OVERHEAD
    hot = HotVectors(3 * row_cost)  # three rows
    hot.put("fp", ["a", "b", "a"], rows(3))  # "a" once: its first row
    hot.put("fp", ["c", "d"], rows(2, start=10))  # "d" takes "a"'s row
    assert hot.get("fp", ["a"]) is None and len(hot) == 3
    np.testing.assert_array_equal(
        hot.get("fp", ["b", "c", "d"]), rows(3)[[1]].tolist() + rows(2, start=10).tolist()
    )
    assert hot.size_bytes <= 3 * row_cost
    hot.put("fp2", ["x"], rows(1))  # another encoder: the least recently used one goes
    assert hot.get("fp", ["b"]) is None and hot.get("fp2", ["x"]) is not None
    nothing = HotVectors(0)
    nothing.put("fp", ["a"], rows(1))
    assert nothing.get("fp", ["a"]) is None and len(nothing) == 0
    with pytest.raises(ValueError):
        HotVectors(-1)


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
