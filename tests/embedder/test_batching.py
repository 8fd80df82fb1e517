"""Token-budget batching and the shared per-model queue."""

import numpy as np
import pytest

from services.embedder.batching import BatchQueue, RunKey, plan_batches
from tunewire.errors import ResourceExhausted


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


MEAN = RunKey("mean", 0, False)
CLS = RunKey("cls", 0, False)


def test_queue_batches_rows_of_several_requests_together():
    queue = BatchQueue()
    a = queue.append([[1, 2, 3], [4]], MEAN)
    b = queue.append([[5, 6]], MEAN)
    rows = queue.next_batch(100)
    assert sorted((row.request is a, row.index) for row in rows) == [
        (False, 0),
        (True, 0),
        (True, 1),
    ]
    queue.deliver(rows, np.stack([np.full(2, len(row.ids), np.float32) for row in rows]))
    assert a.done and b.done and queue.pending_rows == 0
    np.testing.assert_array_equal(a.result(), [[3, 3], [1, 1]])
    np.testing.assert_array_equal(b.result(), [[2, 2]])


def test_queue_serves_the_oldest_row_first_and_never_mixes_keys():
    queue = BatchQueue()
    old = queue.append([[1] * 50], CLS)
    queue.append([[1] * 2, [1] * 3], MEAN)
    queue.append([[1] * 49], CLS)
    first = queue.next_batch(100)
    assert {row.request.key for row in first} == {CLS} and len(first) == 2
    assert any(row.request is old for row in first)
    second = queue.next_batch(100)
    assert {row.request.key for row in second} == {MEAN} and len(second) == 2


def test_queue_full_is_resource_exhausted_but_an_empty_queue_takes_anything():
    queue = BatchQueue(max_queued_tokens=10)
    queue.append([[1] * 30], MEAN)  # alone: allowed even though it exceeds the limit
    with pytest.raises(ResourceExhausted) as err:
        queue.append([[1]], MEAN)
    assert err.value.reason == "QUEUE_FULL"
    queue.next_batch(100)
    queue.append([[1] * 5], MEAN)


def test_failed_batch_fails_its_requests_and_drops_their_other_rows():
    queue = BatchQueue()
    a = queue.append([[1] * 40, [1] * 2], MEAN)
    b = queue.append([[1] * 2], MEAN)
    rows = queue.next_batch(40)  # only the 40-token row fits
    assert [row.request for row in rows] == [a]
    queue.fail(rows, RuntimeError("out of memory"))
    assert a.done and not b.done and queue.pending_rows == 1
    with pytest.raises(RuntimeError, match="out of memory"):
        a.result()


def test_a_request_queued_in_chunks_is_admitted_by_its_first_chunk():
    queue = BatchQueue(max_queued_tokens=10)
    queue.append([[1] * 8], MEAN)
    admitted = queue.open(3, MEAN)
    queue.extend(admitted, [[1] * 2])  # 10 tokens: within the limit
    queue.extend(admitted, [[1] * 5, [1] * 5])  # a later chunk: never refused
    assert queue.queued_tokens == 20
    with pytest.raises(ValueError):
        queue.extend(admitted, [[1]])  # more rows than the request has
    refused = queue.open(1, MEAN)
    with pytest.raises(ResourceExhausted):
        queue.extend(refused, [[1]])
    rows = queue.next_batch(100)
    queue.deliver(rows, np.zeros((len(rows), 2), np.float32))
    assert admitted.done and sorted(row.index for row in rows if row.request is admitted) == [
        0,
        1,
        2,
    ]
