"""The content-addressed embedding cache: one LMDB environment at
`<data_dir>/cache/embeddings.lmdb`, key = `fingerprint.cache_key` (32 bytes), value = a 6-byte
header (format version, dtype, dimension) + the raw little-endian vector.

Why LMDB: readers are lock-free memory-mapped lookups (a trainer on the same host can read the
file directly with `open_readonly`), and a write transaction is atomic, so a crash never leaves a
torn entry. All of a request's misses go in ONE write transaction. When the map is full we double
it and retry the whole transaction instead of failing. Resizing needs no live transaction in this
process, so readers hold a shared lock and the resize an exclusive one.

Size limit: the map grows up to `max_map_size` (default 256 GiB, `--cache-max-size`); a write
that would need more fails with RESOURCE_EXHAUSTED (reason CACHE_FULL) and a message saying how
to raise the limit. We chose a clear error over eviction: entries are content-addressed and
shared by jobs and by same-host readers, so silently dropping some would turn a trainer's read
of the cache into recomputation it did not plan for; an operator raises the limit or moves the
data directory instead.

Replays at speed: a request answered wholly from the cache also stores its answer whole, under
`fingerprint.batch_key` (the exact list of texts), so a data set streamed again in the same
requests costs one read per request instead of one per text - per-text Python work (hashing,
lookups) is what limits a warm stream of small vectors. Content-addressed like every entry, so
never stale; it costs the space of those vectors once more, for data sets read twice only.
Such answers are committed behind the request by one writer thread, many to a transaction
(`put_later`; readable from memory until then): a 2 MiB write and its fsync per request had
been most of a text-by-text stream's cost. `read_batch` hands the stored answer to its caller
as a view of the memory map, so the server copies it once, into the response.

Hits at speed: `get_matrix` copies each found vector once, from the memory map straight into
its row of one matrix; a warm data set streams from it, and a same-host trainer reads through
`ReadonlyCache.get_matrix` (best in requests of a few MB: large fresh buffers cost page faults).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import lmdb
import numpy as np
import structlog

from tunewire.errors import ResourceExhausted

log = structlog.get_logger(__name__)

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB to start; sparse on disk, doubled on demand
DEFAULT_MAX_MAP_SIZE = 256 << 30
# Whole answers handed to the writer thread and not yet committed, at most (put_later blocks).
MAX_PENDING_BYTES = 64 << 20
_HEADER = struct.Struct("<BBI")  # version, dtype code, dimension
_VERSION = 1
# A whole request's answer: version, dtype code, dimension, rows, distinct texts.
_BATCH_HEADER = struct.Struct("<BBIII")
_BATCH_VERSION = 2
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f2")}
_CODES = {v: k for k, v in _DTYPES.items()}
T = TypeVar("T")


def cache_path(data_dir: Path) -> Path:
    return Path(data_dir) / "cache" / "embeddings.lmdb"


def encode_vector(vector: np.ndarray) -> bytes:
    """Header + raw bytes of a 1-d float32/float16 vector."""
    dtype = np.dtype(vector.dtype).newbyteorder("<")
    if vector.ndim != 1 or dtype not in _CODES:
        raise ValueError(
            f"cache stores 1-d float32/float16 vectors, got {vector.dtype}{list(vector.shape)}"
        )
    return _HEADER.pack(_VERSION, _CODES[dtype], vector.shape[0]) + vector.astype(dtype).tobytes()


def decode_vector(value: bytes) -> np.ndarray | None:
    """The vector in `value`, or None if the entry is not one this code wrote whole."""
    if len(value) < _HEADER.size:
        return None
    version, code, dim = _HEADER.unpack_from(value)
    dtype = _DTYPES.get(code)
    if version != _VERSION or dtype is None or len(value) != _HEADER.size + dim * dtype.itemsize:
        return None
    return np.frombuffer(value, dtype=dtype, offset=_HEADER.size)


def vector_header(dtype: np.dtype, dim: int) -> bytes:
    """The 6-byte header every entry of `dim` values of `dtype` starts with."""
    return _HEADER.pack(_VERSION, _CODES[np.dtype(dtype).newbyteorder("<")], dim)


def _values(txn: lmdb.Transaction, keys: list[bytes]) -> list[bytes | None]:
    get = txn.get
    return [get(key) for key in keys]


def _read_matrix(
    txn: lmdb.Transaction, keys: list[bytes], dtype: np.dtype, dim: int
) -> tuple[np.ndarray, list[int]]:
    """[len(keys), dim] of `dtype` (zeros where missing) and the missing positions, from a
    transaction opened with buffers=True: each vector is copied once, from the memory map
    straight into its row (no per-vector bytes or array; that per-entry work, not the copy, is
    what limits reading thousands of vectors)."""
    dtype = np.dtype(dtype).newbyteorder("<")
    header = vector_header(dtype, dim)
    size = _HEADER.size + dim * dtype.itemsize
    row = size - _HEADER.size
    matrix = np.empty((len(keys), dim), dtype=dtype)
    out = memoryview(matrix.reshape(-1)).cast("B")
    missing: list[int] = []
    get = txn.get
    for i, key in enumerate(keys):
        value = get(key)
        if value is None or len(value) != size or value[: _HEADER.size] != header:
            missing.append(i)
        else:
            out[i * row : (i + 1) * row] = value[_HEADER.size :]
    if missing:
        matrix[missing] = 0
    return matrix, missing


def encode_batch(matrix: np.ndarray, distinct: int) -> bytes:
    """Header + raw bytes of a request's [rows, dim] answer that held `distinct` texts."""
    dtype = np.dtype(matrix.dtype).newbyteorder("<")
    data = np.ascontiguousarray(matrix, dtype=dtype).reshape(-1)
    return b"".join(
        [
            _BATCH_HEADER.pack(
                _BATCH_VERSION, _CODES[dtype], matrix.shape[1], matrix.shape[0], distinct
            ),
            memoryview(data).cast("B"),
        ]
    )


def _use_batch(
    value, dtype: np.dtype, dim: int, rows: int, use: Callable[[np.ndarray, int], T]
) -> tuple[T, int] | None:
    """(`use(vectors, distinct)`, distinct) for a stored whole answer of [rows, dim] of `dtype`,
    or None if `value` is not one."""
    dtype = np.dtype(dtype).newbyteorder("<")
    if value is None or len(value) != _BATCH_HEADER.size + rows * dim * dtype.itemsize:
        return None
    version, code, got_dim, got_rows, distinct = _BATCH_HEADER.unpack_from(value)
    if (version, _DTYPES.get(code), got_dim, got_rows) != (_BATCH_VERSION, dtype, dim, rows):
        return None
    matrix = np.frombuffer(value, dtype=dtype, offset=_BATCH_HEADER.size)
    return use(matrix.reshape(rows, dim), distinct), distinct


@dataclass
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    map_size: int


class _SharedExclusiveLock:
    """Many readers or one resizer; `set_mapsize` must not race a live read transaction."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


@dataclass
class _PendingWrite:
    """One put_many call's items, waiting to be committed with others (a group commit)."""

    items: list[tuple[bytes, bytes]]
    done: bool = False
    error: BaseException | None = None


class EmbeddingCache:
    """Read/write cache for the embedder process: one writer at a time, many concurrent readers."""

    def __init__(
        self, path: Path, map_size: int = DEFAULT_MAP_SIZE, max_map_size: int = DEFAULT_MAX_MAP_SIZE
    ) -> None:
        if max_map_size < map_size:
            raise ValueError("max_map_size must be >= map_size")
        self.max_map_size = max_map_size
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # max_readers covers the server's thread pool with room to spare; writemap stays off so a
        # crash mid-write cannot scribble on committed pages.
        self._env = lmdb.open(
            str(self.path),
            map_size=map_size,
            subdir=True,
            max_dbs=0,
            max_readers=256,
            readahead=False,
            metasync=True,
            sync=True,
        )
        self._write_lock = threading.Lock()
        self._group_lock = threading.Lock()
        self._group: list[_PendingWrite] = []  # put_many calls waiting for a group commit
        self._resize = _SharedExclusiveLock()
        self._counter_lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        # Whole answers waiting for the writer thread (put_later), readable meanwhile.
        self._pending: dict[bytes, bytes] = {}
        self._pending_bytes = 0
        self._pending_lock = self._pending_cond = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closed = False
        self._log = log.bind(cache=str(self.path))
        self._log.info(
            "cache opened",
            entries=self._env.stat()["entries"],
            map_size=self._env.info()["map_size"],
        )

    def get_many(self, keys: list[bytes]) -> list[bytes | None]:
        """Values for `keys` in one read transaction; None for a miss (or an unreadable entry)."""
        with self._resize.shared(), self._env.begin(buffers=False) as txn:
            values = [txn.get(key) for key in keys]
        out = [v if v is not None and decode_vector(v) is not None else None for v in values]
        found = sum(v is not None for v in out)
        with self._counter_lock:
            self._hits += found
            self._misses += len(out) - found
        return out

    def contains(self, key: bytes) -> bool:
        """Whether anything is stored under `key` (a marker such as `fingerprint.loaded_key`)."""
        with self._resize.shared(), self._env.begin(buffers=True) as txn:
            return txn.get(key) is not None

    def get_record(self, key: bytes) -> bytes | None:
        """The bytes stored under `key` as they are (a record such as an encoder's shape, not a
        vector; not counted as a hit or a miss)."""
        with self._resize.shared(), self._env.begin(buffers=False) as txn:
            return txn.get(key)

    def get_matrix(
        self, keys: list[bytes], dtype: np.dtype, dim: int
    ) -> tuple[np.ndarray, list[int]]:
        """Vectors for `keys` as one writable matrix (zeros where missing) and the positions of
        the misses (absent, or stored with another dtype/dimension), in one read transaction."""
        with self._resize.shared(), self._env.begin(buffers=True) as txn:
            matrix, missing = _read_matrix(txn, keys, dtype, dim)
        if missing and self._pending:  # vectors handed to the writer thread, not yet committed
            missing = self._read_pending(keys, missing, matrix, dtype, dim)
        with self._counter_lock:
            self._hits += len(keys) - len(missing)
            self._misses += len(missing)
        return matrix, missing

    def _read_pending(
        self, keys: list[bytes], missing: list[int], matrix: np.ndarray, dtype: np.dtype, dim: int
    ) -> list[int]:
        """Fill `matrix`'s rows at `missing` from entries waiting for the writer thread; the
        positions still missing."""
        header = vector_header(dtype, dim)
        with self._pending_lock:
            values = [self._pending.get(keys[i]) for i in missing]
        still = []
        for i, value in zip(missing, values, strict=True):
            vector = None if value is None else decode_vector(value)
            if vector is None or value[: _HEADER.size] != header:
                still.append(i)
            else:
                matrix[i] = vector
        return still

    def read_batch(
        self, key: bytes, dtype: np.dtype, dim: int, rows: int, use: Callable[[np.ndarray, int], T]
    ) -> T | None:
        """`use(vectors, distinct)` on a stored whole answer ([rows, dim] of dtype, and its
        distinct-text count), or None if there is none. `use` runs inside the read transaction
        and `vectors` is a read-only view of the memory map, valid only during the call: the
        caller copies the vectors once, straight into what it sends, instead of out of the map
        first and into a response after. An answer still waiting for the writer (`put_later`)
        is read from memory."""
        with self._pending_lock:
            value = self._pending.get(key)
        if value is not None:
            out = _use_batch(value, dtype, dim, rows, use)
        else:
            with self._resize.shared(), self._env.begin(buffers=True) as txn:
                out = _use_batch(txn.get(key), dtype, dim, rows, use)
        if out is None:
            return None
        with self._counter_lock:
            self._hits += out[1]
        return out[0]

    def put_later(self, key: bytes, value: bytes) -> None:
        """Store `value` under `key` from the writer thread, many to a transaction: for whole
        answers, an optimisation whose commit (a 2 MiB write and its fsync) need not hold up the
        request that made it. Readable by `read_batch` and `get_matrix` at once; blocks while
        more than `MAX_PENDING_BYTES` wait; dropped with a warning if the cache is full."""
        self.put_many_later([(key, value)])

    def put_many_later(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """`put_later` for several entries: for online prediction's vectors, whose commit
        (an fsync, 5-15 ms on a busy disk) was most of a cold single-row request's own work,
        and which nobody reads from the file before the writer commits them."""
        with self._pending_cond:
            self._pending_cond.wait_for(
                lambda: self._pending_bytes < MAX_PENDING_BYTES or self._closed
            )
            if self._closed:
                return
            for key, value in items:
                old = self._pending.get(key)
                self._pending[key] = value
                self._pending_bytes += len(value) - (len(old) if old is not None else 0)
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_pending, name="cache-writer", daemon=True
                )
                self._writer.start()
            self._pending_cond.notify_all()

    def flush(self) -> None:
        """Wait until every `put_later` value is committed (or dropped)."""
        with self._pending_cond:
            self._pending_cond.wait_for(lambda: not self._pending)

    def _write_pending(self) -> None:
        while True:
            with self._pending_cond:
                self._pending_cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                items = list(self._pending.items())
            try:
                self.put_many(items)
            except ResourceExhausted as exc:
                self._log.warning("whole answers not stored", error=exc.message, count=len(items))
            except Exception:  # noqa: BLE001 - an optimisation: the answers were sent anyway
                self._log.exception("whole answers not stored", count=len(items))
            with self._pending_cond:
                for key, value in items:
                    if self._pending.get(key) is value:
                        del self._pending[key]
                        self._pending_bytes -= len(value)
                self._pending_cond.notify_all()

    def count_hits(self, n: int) -> None:
        """Count `n` hits served without a read (an answer kept in memory, hot_answers.py)."""
        with self._counter_lock:
            self._hits += n

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Write every (key, value) in one transaction: all of them land, or none do.

        Group commit: a commit waits for the disk (fsync, milliseconds), so writers that arrive
        while one commits are written together by the next, in one transaction and one fsync,
        instead of one fsync each behind the single write lock (many small online requests).
        A group lands or fails as a whole, so each call's items still all land or none do; each
        call returns once its items are durable."""
        items = list(items)
        if not items:
            return
        mine = _PendingWrite(items)
        with self._group_lock:
            self._group.append(mine)
        with self._write_lock:
            if not mine.done:  # not written by the group before: this thread writes a group
                with self._group_lock:
                    group, self._group = self._group, []
                try:
                    self._commit([kv for write in group for kv in write.items])
                except BaseException as exc:
                    for write in group:
                        write.error = exc
                finally:
                    for write in group:
                        write.done = True
        if mine.error is not None:
            raise mine.error

    def _commit(self, items: list[tuple[bytes, bytes]]) -> None:
        """One write transaction of `items` (under the write lock), growing the map as needed."""
        while True:
            try:
                with self._resize.shared(), self._env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                # The commit failed as a whole (LMDB is atomic): nothing half-written stays.
                raise ResourceExhausted(
                    f"the embedding cache at {self.path} could not be written ({exc}); the "
                    "disk is probably full",
                    reason="DISK_FULL",
                ) from None

    def _grow(self) -> None:
        with self._resize.exclusive():
            old = self._env.info()["map_size"]
            if old >= self.max_map_size:
                raise ResourceExhausted(
                    f"the embedding cache at {self.path} is full: it reached its size limit of "
                    f"{self.max_map_size} bytes; raise --cache-max-size or move the data "
                    "directory to a larger disk",
                    reason="CACHE_FULL",
                )
            new = min(old * 2, self.max_map_size)
            self._env.set_mapsize(new)
        self._log.info("cache map grown", old_map_size=old, map_size=new)

    def stats(self) -> CacheStats:
        self.flush()  # entries and bytes count what was handed to put_later
        with self._resize.shared():
            stat = self._env.stat()
            info = self._env.info()
        pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        with self._counter_lock:
            hits, misses = self._hits, self._misses
        return CacheStats(
            entries=stat["entries"],
            bytes=pages * stat["psize"],
            hits=hits,
            misses=misses,
            map_size=info["map_size"],
        )

    def close(self) -> None:
        self.flush()
        with self._pending_cond:
            self._closed = True
            self._pending_cond.notify_all()
            writer = self._writer
        if writer is not None:
            writer.join()
        with self._write_lock, self._resize.exclusive():
            self._env.close()
        self._log.info("cache closed")


class ReadonlyCache:
    """Direct memory-mapped reads for another process on the same host (a trainer).

    By default `lock=False`, so the reader needs no write access to the lock file; it sees the
    last committed state and picks up a map the writer has grown since. Such a reader is not in
    LMDB's reader table, so a writer committing twice during one of its transactions may recycle
    pages that transaction still reads; each `get_many` is therefore one short transaction. A
    reader that can write the lock file should pass `lock=True` to be fully isolated."""

    def __init__(self, path: Path, lock: bool = False) -> None:
        self.path = Path(path)
        self._env = lmdb.open(
            str(self.path), readonly=True, lock=lock, subdir=True, readahead=False, map_size=0
        )

    def get_many(self, keys: list[bytes]) -> list[np.ndarray | None]:
        try:
            values = self._read(keys)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)  # adopt the size the writer grew the map to
            values = self._read(keys)
        return [decode_vector(v) if v is not None else None for v in values]

    def get_matrix(
        self, keys: list[bytes], dtype: np.dtype, dim: int
    ) -> tuple[np.ndarray, list[int]]:
        """One matrix of the vectors for `keys` (zeros where missing) and the missing positions:
        the fast path for a trainer reading a data set's vectors (one copy out of the map)."""
        try:
            return self._matrix(keys, dtype, dim)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return self._matrix(keys, dtype, dim)

    def _matrix(self, keys: list[bytes], dtype: np.dtype, dim: int) -> tuple[np.ndarray, list[int]]:
        with self._env.begin(buffers=True) as txn:
            return _read_matrix(txn, keys, dtype, dim)

    def _read(self, keys: list[bytes]) -> list[bytes | None]:
        with self._env.begin(buffers=False) as txn:
            return _values(txn, keys)

    def close(self) -> None:
        self._env.close()


def open_readonly(path: Path, lock: bool = False) -> ReadonlyCache:
    """Open an embedder's cache for reading only (path of the .lmdb directory, or a data dir)."""
    path = Path(path)
    if not (path / "data.mdb").exists() and (cache_path(path) / "data.mdb").exists():
        path = cache_path(path)
    return ReadonlyCache(path, lock=lock)
