"""The LMDB cache on a real environment on disk."""

import multiprocessing
import os
import threading

import lmdb
import numpy as np
import pytest

from services.embedder import fingerprint as fp_mod
from services.embedder.cache import (
    EmbeddingCache,
    cache_path,
    decode_vector,
    encode_vector,
    open_readonly,
)


def _items(n: int, dim: int = 16, seed: int = 0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(dtype)
    keys = [fp_mod.cache_key("f" * 64, f"text {seed} {i}") for i in range(n)]
    return keys, vectors


def test_round_trip_float32_and_float16(cache):
    for dtype in (np.float32, np.float16):
        keys, vectors = _items(10, dtype=dtype, seed=int(np.dtype(dtype).itemsize))
        cache.put_many(zip(keys, (encode_vector(v) for v in vectors)))
        got = cache.get_many(keys)
        for value, expected in zip(got, vectors):
            vector = decode_vector(value)
            assert vector.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(vector, expected)
    stats = cache.stats()
    assert stats.entries == 20 and stats.hits == 20 and stats.misses == 0 and stats.bytes > 0


def test_misses_are_none_and_counted(cache):
    keys, vectors = _items(3)
    cache.put_many([(keys[0], encode_vector(vectors[0]))])
    got = cache.get_many(keys)
    assert got[0] is not None and got[1] is None and got[2] is None
    assert (cache.stats().hits, cache.stats().misses) == (1, 2)


def test_truncated_entry_reads_as_a_miss():
    keys, vectors = _items(1)
    value = encode_vector(vectors[0])
    assert decode_vector(value) is not None
    assert decode_vector(value[:-1]) is None
    assert decode_vector(value + b"\0") is None
    assert decode_vector(b"abc") is None


def test_map_grows_instead_of_failing(tmp_path):
    cache = EmbeddingCache(tmp_path / "small.lmdb", map_size=64 * 1024)
    try:
        keys, vectors = _items(400, dim=256)  # ~400 KiB of vectors into a 64 KiB map
        cache.put_many(zip(keys[:200], (encode_vector(v) for v in vectors[:200])))
        cache.put_many(zip(keys[200:], (encode_vector(v) for v in vectors[200:])))
        stats = cache.stats()
        assert stats.entries == 400
        assert stats.map_size >= 400 * 256 * 4
        got = cache.get_many(keys)
        np.testing.assert_array_equal(np.stack([decode_vector(v) for v in got]), vectors)
    finally:
        cache.close()


def _write_then_die(path: str) -> None:
    env = lmdb.open(path, map_size=1 << 20)
    txn = env.begin(write=True)
    txn.put(b"k" * 32, b"partial")
    os._exit(1)  # crash with the transaction open: nothing may land


def test_crash_mid_transaction_leaves_no_entry(tmp_path):
    path = tmp_path / "crash.lmdb"
    EmbeddingCache(path).close()
    proc = multiprocessing.get_context("spawn").Process(target=_write_then_die, args=(str(path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 1
    cache = EmbeddingCache(path)
    try:
        assert cache.get_many([b"k" * 32]) == [None]
        assert cache.stats().entries == 0
    finally:
        cache.close()


def _reader(data_dir: str, keys: list[bytes], conn) -> None:
    """Another process on the same host (a trainer) reading the file directly."""
    reader = open_readonly(data_dir)
    conn.send(reader.get_many(keys))
    conn.recv()  # the writer has grown the map and written more
    conn.send(reader.get_many(keys))
    try:
        with reader._env.begin(write=True) as txn:
            txn.put(b"x", b"y")
        conn.send("wrote")
    except lmdb.Error as exc:
        conn.send(type(exc).__name__)
    reader.close()


def test_readonly_reader_in_another_process_sees_commits_and_a_grown_map(tmp_path):
    data_dir = tmp_path / "data"
    writer = EmbeddingCache(cache_path(data_dir), map_size=64 * 1024)
    keys, vectors = _items(300, dim=256)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    try:
        writer.put_many([(keys[0], encode_vector(vectors[0]))])
        proc = ctx.Process(target=_reader, args=(str(data_dir), keys, child))
        proc.start()
        first = parent.recv()
        np.testing.assert_array_equal(first[0], vectors[0])
        assert all(v is None for v in first[1:])
        writer.put_many(zip(keys[1:], (encode_vector(v) for v in vectors[1:])))  # grows the map
        assert writer.stats().map_size > 64 * 1024
        parent.send("go")
        second = parent.recv()
        np.testing.assert_array_equal(np.stack(second), vectors)
        assert parent.recv() != "wrote"
        proc.join(60)
        assert proc.exitcode == 0
    finally:
        writer.close()


def test_get_matrix_one_read_with_misses_and_wrong_dtype(cache):
    keys, vectors = _items(5, dim=8, seed=7, dtype=np.float16)
    cache.put_many(zip(keys[:3], (encode_vector(v) for v in vectors[:3])))
    matrix, missing = cache.get_matrix(keys, np.float16, 8)
    assert missing == [3, 4] and matrix.flags.writeable
    np.testing.assert_array_equal(matrix[:3], vectors[:3])
    assert not matrix[3:].any()
    # Same keys asked as float32 or another dimension: entries written otherwise are misses.
    assert cache.get_matrix(keys[:3], np.float32, 8)[1] == [0, 1, 2]
    assert cache.get_matrix(keys[:3], np.float16, 4)[1] == [0, 1, 2]
    assert cache.get_matrix([], np.float16, 8)[0].shape == (0, 8)


def test_size_limit_is_a_clear_resource_exhausted(tmp_path):
    from tunewire.errors import ResourceExhausted

    small = EmbeddingCache(tmp_path / "small.lmdb", map_size=1 << 20, max_map_size=4 << 20)
    try:
        keys, vectors = _items(100, dim=2048, seed=3)  # ~1.2 MB in pages: one doubling, fits
        small.put_many(zip(keys, (encode_vector(v) for v in vectors)))
        assert small.stats().map_size == 2 << 20
        keys, vectors = _items(300, dim=2048, seed=4)  # ~3.6 MB more: over the 4 MB limit
        with pytest.raises(ResourceExhausted) as err:
            small.put_many(zip(keys, (encode_vector(v) for v in vectors)))
        assert err.value.reason == "CACHE_FULL" and "--cache-max-size" in err.value.message
        assert small.get_matrix(keys, np.float32, 2048)[1] == list(range(300))  # none landed
        assert small.stats().map_size == 4 << 20
    finally:
        small.close()


def test_readonly_get_matrix_reads_what_the_writer_wrote(tmp_path):
    keys, vectors = _items(50, dim=32, seed=9, dtype=np.float16)
    writer = EmbeddingCache(cache_path(tmp_path))
    writer.put_many(zip(keys, (encode_vector(v) for v in vectors)))
    writer.close()
    reader = open_readonly(tmp_path)
    try:
        matrix, missing = reader.get_matrix(keys + [b"\0" * 32], np.float16, 32)
    finally:
        reader.close()
    assert missing == [50]
    np.testing.assert_array_equal(matrix[:50], vectors)


def test_whole_answers_round_trip(cache):
    from services.embedder.cache import encode_batch

    matrix = np.arange(12, dtype=np.float16).reshape(3, 4)
    key = fp_mod.batch_key("f" * 64, fp_mod.encode_texts(["a", "b", "a"]))
    cache.put_many([(key, encode_batch(matrix, distinct=2))])
    seen = []

    def use(vectors, distinct):  # inside the read transaction: a view of the memory map
        assert not vectors.flags.writeable and not vectors.flags.owndata
        seen.append(vectors.copy())
        return distinct

    assert cache.read_batch(key, np.float16, 4, 3, use) == 2
    np.testing.assert_array_equal(seen[0], matrix)
    assert seen[0].tobytes() == matrix.tobytes()  # bit for bit
    assert cache.read_batch(key, np.float32, 4, 3, use) is None  # other dtype/shape: not it
    assert cache.read_batch(key, np.float16, 4, 2, use) is None
    assert cache.read_batch(b"\0" * 32, np.float16, 4, 3, use) is None
    assert len(seen) == 1


def test_batch_keys_name_the_exact_list_of_texts():
    key, encode = fp_mod.batch_key, fp_mod.encode_texts
    lists = [
        [],
        [""],
        ["", ""],
        ["a", "b"],
        ["ab"],
        ["a\0b"],
        ["a", "\0b"],
        ["b", "a"],
        ["naïve"],
        ["a", "bc"],
        ["ab", "c"],
    ]
    assert len({key("f" * 64, encode(texts)) for texts in lists}) == len(lists)
    assert key("f" * 64, encode(["a"])) != key("e" * 64, encode(["a"]))
    assert key("f" * 64, encode(["a"])) != fp_mod.cache_key("f" * 64, "a")


def test_cache_keys_are_sha256_of_fingerprint_nul_text():
    import hashlib

    texts = ["", "a", "a\0b", "naïve café ☕", "x" * 10000, "a"]
    expected = [hashlib.sha256(b"f" * 64 + b"\0" + t.encode("utf-8")).digest() for t in texts]
    assert fp_mod.cache_keys("f" * 64, texts) == expected
    assert [fp_mod.cache_key("f" * 64, t) for t in texts] == expected
    assert fp_mod.cache_keys("f" * 64, []) == []
    # Any fingerprint length (the hash's state after it is copied per text), any iterable.
    for fingerprint in ("", "ab", "f" * 63, "e" * 200):
        prefix = fingerprint.encode() + b"\0"
        assert fp_mod.cache_keys(fingerprint, iter(texts)) == [
            hashlib.sha256(prefix + t.encode("utf-8")).digest() for t in texts
        ]


def test_encoded_batch_is_header_then_the_raw_vectors():
    from services.embedder.cache import encode_batch

    matrix = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]  # not contiguous
    value = encode_batch(matrix, distinct=3)
    assert value[-matrix.nbytes :] == np.ascontiguousarray(matrix).tobytes()
    assert len(value) == 14 + matrix.nbytes


def test_keys_on_disk_never_change():
    """Entries written by earlier versions must still be found: the key functions are pinned."""
    assert fp_mod.cache_key("f" * 64, "a").hex() == (
        "6a41aa22e15c45d40fb2822ee5effebfda61cf092b55a418aeec8e0cd89fd15b"
    )
    # Whole answers: keyed by the texts' wire form as the SDK sends it, joined since the
    # `joined` field (answers stored under earlier forms are found by requests in those forms;
    # the SDK's next replay stores them again under its own).
    assert fp_mod.encode_texts(["a", "b"]) == b"\x1a\x07\x0a\x03a\x00b\x10\x02"
    assert fp_mod.batch_key("f" * 64, fp_mod.encode_texts(["a", "b"])).hex() == (
        "7f9f31aac29be6e727e0942fffa6fd0a7693bd28df2c64ae097a2426ed07eaed"
    )
    # Texts holding a NUL go as records, the form every key had before.
    assert fp_mod.encode_texts(["a\0b"]) == b"\x12\x03a\x00b"


def test_concurrent_writers_share_a_commit_and_all_land(tmp_path, monkeypatch):
    """Group commit: writers arriving while one commits are written by the next commit, together;
    each put_many returns with its items durable, and a failed group fails each of its calls."""
    import threading
    import time

    from tunewire.errors import ResourceExhausted

    cache = EmbeddingCache(tmp_path / "group.lmdb")
    commits, real = [], cache._commit

    def slow_commit(items):
        commits.append(len(items))
        time.sleep(0.05)  # a slow fsync: the others queue up meanwhile
        real(items)

    monkeypatch.setattr(cache, "_commit", slow_commit)
    threads = [
        threading.Thread(target=cache.put_many, args=([(f"k{i}".encode(), b"v" * 8)],))
        for i in range(12)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(commits) == 12 and len(commits) < 12, commits
    with cache._env.begin() as txn:
        assert all(txn.get(f"k{i}".encode()) == b"v" * 8 for i in range(12))

    def failing(items):
        time.sleep(0.05)
        raise ResourceExhausted("disk full", reason="DISK_FULL")

    monkeypatch.setattr(cache, "_commit", failing)
    errors = []

    def put(i):
        try:
            cache.put_many([(f"x{i}".encode(), b"v")])
        except ResourceExhausted as exc:
            errors.append(exc.reason)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == ["DISK_FULL"] * 4
    cache.close()


def test_vectors_written_behind_are_read_before_and_after_their_commit(cache, monkeypatch):
    """Online prediction's misses go to the writer thread: a request for the same texts meanwhile
    reads them from memory (not a miss), and they land in the file."""
    keys, vectors = _items(4)
    gate = threading.Event()
    commit = cache._commit
    monkeypatch.setattr(cache, "_commit", lambda items: (gate.wait(10), commit(items)))
    cache.put_many_later(zip(keys[:3], (encode_vector(v) for v in vectors[:3])))
    matrix, missing = cache.get_matrix(keys, np.float32, 16)
    assert missing == [3]
    np.testing.assert_array_equal(matrix[:3], vectors[:3])
    assert cache.get_matrix(keys[:1], np.float16, 16)[1] == [0]  # another dtype is a miss
    gate.set()
    cache.flush()
    assert not cache._pending  # committed: what follows is read from the file
    matrix, missing = cache.get_matrix(keys, np.float32, 16)
    assert missing == [3]
    np.testing.assert_array_equal(matrix[:3], vectors[:3])
