"""Token-budget batching."""

import pytest

from services.embedder.batching import plan_batches


def test_every_index_once_and_budget_respected():
    lengths = [5, 100, 7, 3, 64, 64, 12, 1, 30, 2]
    batches = plan_batches(lengths, max_batch_tokens=128)
    seen = sorted(i for b in batches for i in b.index)
    assert seen == list(range(len(lengths)))
    for b in batches:
        assert b.padded_length == max(lengths[i] for i in b.index)
        assert b.padded_tokens <= 128 or len(b.index) == 1


def test_sorted_longest_first_so_similar_lengths_share_a_batch():
    lengths = [3, 50, 4, 49, 5, 48]
    batches = plan_batches(lengths, max_batch_tokens=150)
    assert [sorted(b.index) for b in batches] == [[1, 3, 5], [0, 2, 4]]
    assert [b.padded_length for b in batches] == [50, 5]


def test_short_texts_fill_a_batch_beyond_any_fixed_count():
    batches = plan_batches([4] * 1000, max_batch_tokens=16384)
    assert len(batches) == 1 and len(batches[0].index) == 1000


def test_text_longer_than_budget_gets_its_own_batch():
    batches = plan_batches([500, 10, 10], max_batch_tokens=100)
    assert batches[0].index == [0] and sorted(batches[1].index) == [1, 2]


def test_empty_and_invalid():
    assert plan_batches([], 10) == []
    with pytest.raises(ValueError):
        plan_batches([1], 0)
