"""Recently read or computed vectors kept in memory, found by their text: the text-by-text path
without a sha256, an LMDB lookup or a Python object per text.

A request answered from the cache text by text (another data set sharing the texts, the same
texts in another batch order) costs, per text, the sha256 of its cache key and an LMDB lookup
and copy: ~2 us a text on a 2-core VM, most of a 2 MiB chunk of small vectors. A dict from text
to row still cost a str per text (split from the request) and three dependent cache misses per
lookup (~1-2 ms for 2,730 texts on a loaded VM, more than gRPC's own work for the chunk).

Here each encoder (its fingerprint, which fixes dimension and dtype) has a ring of rows in one
matrix, each row's text as UTF-8 bytes, and a sorted array of the rows' 64-bit text hashes. A
request comes as its texts joined by NUL in one buffer (what the SDK sends,
`EmbedRequest.joined`); numpy hashes every text of it at once (`text_hashes`), finds the rows
with one `searchsorted` and checks the match exactly: the kept texts of those rows, joined by
NUL, must equal the request's buffer byte for byte. So a hash collision (the hash is not
cryptographic: texts can be made to collide) never answers with another text's vector; it only
sends the request the slow way (the colliding text is not kept). Then the rows are gathered
once, by numpy, under the lock (`answer`): straight into the response a server sends, not into
an array that is copied into it again. Texts holding a NUL are never kept (their joined form is
ambiguous).

Entries go in first-in first-out order (the oldest row is overwritten), within a byte budget
shared by every encoder (`max_bytes`, 0 keeps nothing; it counts the rows, the texts' bytes and
a fixed cost per entry), least recently used encoder dropped first. Keyed by the fingerprint, so
never stale: a changed model has another fingerprint. Exact: the rows are copies of what the
cache holds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, TypeVar

import numpy as np

T = TypeVar("T")

# What `HotVectors.answer(..., wait=False)` gives while the lock is held elsewhere: not looked up.
BUSY = object()

DEFAULT_HOT_VECTOR_BYTES = 256 * 1024 * 1024
# What a kept text costs beside its row and its bytes: the bytes object, the array's reference,
# its hash and its place in the sorted index.
_ENTRY_OVERHEAD = 72
# The text length a ring's size is planned for (longer texts make the oldest go sooner).
_PLANNED_TEXT_BYTES = 64
_FIRST_ROWS = 4096  # a ring starts this large and doubles up to its budget

# The text hash: sum of byte_j * _MUL^j over a text's bytes, modulo 2^64 (numpy's uint64
# arithmetic wraps), plus its length times _LEN. Computed for a whole buffer at once with
# global positions, shifted back by _INV^start (the inverse of _MUL, which is odd) to each
# text's start.
_MUL = np.uint64(0x9E3779B97F4A7C15)
_INV = np.uint64(pow(int(_MUL), -1, 1 << 64))
_LEN = np.uint64(0xD6E8FEB86659FD93)
_CACHED_POWERS = 1 << 20  # powers kept between calls: buffers up to 1 MiB need no new table


class _Powers:
    """_MUL^i and _INV^i for i < n, grown on demand (kept up to `_CACHED_POWERS`)."""

    def __init__(self) -> None:
        self._tables = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        tables = self._tables  # one read: another thread may replace them meanwhile
        if len(tables[0]) >= n:
            return tables
        size = 1 << (n - 1).bit_length()
        tables = (_powers(_MUL, size), _powers(_INV, size))
        if size <= _CACHED_POWERS:
            self._tables = tables
        return tables


def _powers(base: np.uint64, n: int) -> np.ndarray:
    powers = np.full(n, base, dtype=np.uint64)
    powers[0] = 1
    return np.cumprod(powers, out=powers)


_POWERS = _Powers()


def text_hashes(joined: bytes, count: int) -> np.ndarray | None:
    """The 64-bit hash of each of the `count` texts joined by NUL in `joined` (UTF-8), or None
    if `joined` does not hold `count` texts. Equal texts hash equal wherever they sit."""
    buf = np.frombuffer(joined, dtype=np.uint8)
    if not count:
        return None if len(buf) else np.empty(0, dtype=np.uint64)
    nul = np.flatnonzero(buf == 0)
    if len(nul) + 1 != count:
        return None
    starts = np.empty(count, dtype=np.intp)
    starts[0], starts[1:] = 0, nul + 1
    lengths = np.empty(count, dtype=np.uint64)
    lengths[:-1] = nul - starts[:-1]
    lengths[-1] = len(buf) - starts[-1]
    if len(buf) < _CACHED_POWERS:
        return _segment_hashes(buf, starts, lengths)
    # A long buffer in pieces of about _CACHED_POWERS bytes, cut between texts: the power
    # tables and the weighted copy (8 bytes a byte) stay that size.
    hashes = np.empty(count, dtype=np.uint64)
    first = 0
    while first < count:
        # Pieces shorter than _CACHED_POWERS, so that their power tables are the kept ones (a
        # piece of just over it needed tables twice that size, built anew for every request:
        # ~20-30 ms of a 1.2 MB request's begin on the H200 host).
        if len(buf) - starts[first] < _CACHED_POWERS:
            end = count  # the rest fits
        else:
            last = np.searchsorted(starts, starts[first] + _CACHED_POWERS - 1, side="right")
            end = max(first + 1, int(last) - 1)
        stop = starts[end] if end < count else len(buf)
        hashes[first:end] = _segment_hashes(
            buf[starts[first] : stop], starts[first:end] - starts[first], lengths[first:end]
        )
        first = end
    return hashes


def _segment_hashes(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The hash of each text of `buf` starting at `starts` (each ends at the next start, or at
    the end, its NUL included: a zero)."""
    mul, inv = _POWERS.get(len(buf) + 1)
    # Each byte times _MUL^(position in `buf`), summed per text with its closing NUL (one more
    # zero past the end, so that a last empty text has a segment too): a segmented sum is
    # several times faster than a running one. _INV^start then makes each sum start at _MUL^0.
    weighted = np.empty(len(buf) + 1, dtype=np.uint64)
    np.multiply(buf, mul[: len(buf)], out=weighted[: len(buf)])
    weighted[-1] = 0
    return np.add.reduceat(weighted, starts) * inv[starts] + lengths * _LEN


def joined_texts(texts: Sequence[str]) -> bytes | None:
    """`texts` joined by NUL as UTF-8 (what `EmbedRequest.joined` carries), or None if one
    cannot be encoded. A text holding a NUL gives a buffer of more texts than `texts`, which
    `text_hashes` refuses."""
    try:
        return "\0".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        return None


class Kept(NamedTuple):
    vectors: np.ndarray  # [count, dim] in request order, a new array
    distinct: int  # distinct texts among them


def _encoded(texts: Sequence[str]) -> tuple[list[int], list[bytes], bytes]:
    """Which of `texts` can be kept (UTF-8, no NUL: a NUL would make their joined form
    ambiguous), those texts encoded, and them joined by NUL. All at once when every text can
    (one join, one encode, one split), else text by text."""
    together = "\0".join(texts)
    if texts and together.count("\0") == len(texts) - 1:
        try:
            joined = together.encode("utf-8")
        except UnicodeEncodeError:
            pass
        else:
            return list(range(len(texts))), joined.split(b"\0"), joined
    keep, encoded = [], []
    for i, text in enumerate(texts):
        if "\0" in text:
            continue
        try:
            encoded.append(text.encode("utf-8"))
        except UnicodeEncodeError:
            continue
        keep.append(i)
    return keep, encoded, b"\0".join(encoded)


class _Ring:
    """One encoder's rows, overwritten oldest first once full, and a sorted index of their
    texts' hashes (each hash at most once)."""

    def __init__(self, dim: int, dtype: np.dtype, max_rows: int, max_bytes: int) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.rows = np.empty((min(_FIRST_ROWS, max_rows), dim), dtype=dtype)
        # Each row's text (None: a free row), as objects numpy gathers without a Python step.
        self.texts = np.full(len(self.rows), None, dtype=object)
        self.hashes = np.zeros(len(self.rows), dtype=np.uint64)  # of each row's text
        self.sorted_hashes = np.empty(0, dtype=np.uint64)
        self.sorted_rows = np.empty(0, dtype=np.intp)
        self.text_bytes = 0
        self.next = 0  # the row the next new text takes: the oldest once the ring is full

    def __len__(self) -> int:
        return len(self.sorted_rows)

    def nbytes(self) -> int:
        return self.rows.nbytes + self.text_bytes + len(self) * _ENTRY_OVERHEAD

    def _grown_size(self) -> int:
        """Rows after growing, or the rows now when the budget (or `max_rows`) says no."""
        size = min(len(self.rows) * 2, self.max_rows)
        grown_bytes = self.nbytes() + (size - len(self.rows)) * self.rows[0].nbytes
        return size if grown_bytes <= self.max_bytes else len(self.rows)

    def _grow(self, size: int) -> None:
        grown = np.empty((size, self.rows.shape[1]), dtype=self.rows.dtype)
        grown[: len(self.rows)] = self.rows
        self.texts = np.concatenate([self.texts, np.full(size - len(self.rows), None, object)])
        self.hashes = np.concatenate([self.hashes, np.zeros(size - len(self.hashes), np.uint64)])
        self.rows = grown

    def _find(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where `hashes` are (or would go) in the sorted index, and which are there."""
        pos = np.searchsorted(self.sorted_hashes, hashes)
        found = np.zeros(len(hashes), dtype=bool)
        inside = pos < len(self.sorted_hashes)
        found[inside] = self.sorted_hashes[pos[inside]] == hashes[inside]
        return pos, found

    def _slots(self, n: int) -> np.ndarray:
        """`n` rows for new texts: the next ones, growing the matrix while the budget allows,
        else wrapping round to the oldest."""
        parts, left = [], n
        while left:
            if self.next == len(self.rows):
                size = self._grown_size()
                if size > len(self.rows):
                    self._grow(size)
                else:
                    self.next = 0
            take = min(left, len(self.rows) - self.next)
            parts.append(np.arange(self.next, self.next + take, dtype=np.intp))
            self.next += take
            left -= take
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.intp)

    def _forget(self, slots: list[int] | np.ndarray) -> None:
        """Take the texts of `slots` (rows that hold one) out of the index."""
        if not len(slots):
            return
        self.text_bytes -= sum(map(len, self.texts[slots]))
        self.texts[slots] = None
        pos, _ = self._find(self.hashes[slots])
        self.sorted_hashes = np.delete(self.sorted_hashes, pos)
        self.sorted_rows = np.delete(self.sorted_rows, pos)

    def _trim(self) -> None:
        """Forget the oldest texts while long texts keep the ring over its budget."""
        excess, slot, slots = self.nbytes() - self.max_bytes, self.next, []
        while excess > 0 and len(slots) < len(self):
            slot %= len(self.rows)
            text = self.texts[slot]
            if text is not None:
                slots.append(slot)
                excess -= len(text) + _ENTRY_OVERHEAD
            slot += 1
        self._forget(slots)

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        keep, encoded, joined = _encoded(texts)
        if not keep:
            return
        hashes = text_hashes(joined, len(encoded))
        # New hashes only, each once: a text already kept, or one whose hash a kept or an
        # earlier text has, is not kept again.
        _, first = np.unique(hashes, return_index=True)
        first.sort()
        first = first[~self._find(hashes[first])[1]]
        first = first[-self.max_rows :]  # more texts than rows: the last ones stay
        if not len(first):
            return
        slots = self._slots(len(first))
        if len(slots) > len(self.rows):  # the ring could not grow: the last texts stay
            slots, first = slots[-len(self.rows) :], first[-len(self.rows) :]
        self._forget(slots[np.not_equal(self.texts[slots], None)])
        new_hashes = hashes[first]
        new_texts = np.empty(len(encoded), dtype=object)
        new_texts[:] = encoded
        new_texts = new_texts[first]
        self.texts[slots] = new_texts
        self.text_bytes += sum(map(len, new_texts))
        self.hashes[slots] = new_hashes
        self.rows[slots] = vectors[np.asarray(keep, dtype=np.intp)[first]]
        order = np.argsort(new_hashes)
        at = np.searchsorted(self.sorted_hashes, new_hashes[order])
        self.sorted_hashes = np.insert(self.sorted_hashes, at, new_hashes[order])
        self.sorted_rows = np.insert(self.sorted_rows, at, slots[order])
        if self.nbytes() > self.max_bytes:
            self._trim()

    def find(self, hashes: np.ndarray, joined: bytes) -> tuple[np.ndarray, int] | None:
        """The rows of the texts `joined` (by NUL) whose `text_hashes` are `hashes`, in order,
        and how many distinct texts they are, if every one is kept."""
        count = len(hashes)
        if not count:
            return np.empty(0, dtype=np.intp), 0
        order = np.argsort(hashes)
        sorted_hashes = hashes[order]
        pos, found = self._find(sorted_hashes)
        if not found.all():
            return None
        rows = np.empty(count, dtype=np.intp)
        rows[order] = self.sorted_rows[pos]
        # Exact: the kept texts of those rows are the request's texts, byte for byte.
        if b"\0".join(self.texts.take(rows).tolist()) != joined:
            return None
        distinct = 1 + int(np.count_nonzero(sorted_hashes[1:] != sorted_hashes[:-1]))
        return rows, distinct


def _may_hold_first(ring: _Ring, joined: bytes, count: int) -> bool:
    """Whether `ring` may hold the first of the `count` texts joined in `joined`: its hash
    alone looked up in the index as it is now, without the lock. A request of texts never seen
    (a cold stream's) is so told from its first text, before its whole buffer is hashed (~10-30
    ms of a 512-text request's begin, on the GPU pipeline's critical path at a stream's start).
    Never wrong: False when it is kept after all (a put meanwhile) only sends the request the
    slow way, exact as ever; True is checked in full."""
    if count < 2:
        return True
    first = text_hashes(joined[: max(joined.find(b"\0"), 0)], 1)
    index = ring.sorted_hashes  # one read: a put replaces the array, never changes it
    pos = int(np.searchsorted(index, first[0]))
    return pos < len(index) and index[pos] == first[0]


class HotVectors:
    """Vectors by (fingerprint, text), within `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_HOT_VECTOR_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._rings: OrderedDict[str, _Ring] = OrderedDict()
        # A gather must not read a row being overwritten. A plain Lock: `put_behind` takes it
        # on the caller's thread and its writer thread releases it.
        self._lock = threading.Lock()
        self._writer_lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None  # `put_behind`'s thread, made at first

    def answer(
        self,
        fingerprint: str,
        joined: bytes,
        count: int,
        use: Callable[[np.ndarray, np.ndarray, int], T],
        wait: bool = True,
    ) -> T | object | None:
        """`use(matrix, rows, distinct)` for the `count` texts joined by NUL in `joined`
        (UTF-8): their vectors are `matrix[rows]`, in order, `distinct` of them distinct. None
        unless every text is kept. `use` runs under the lock, so that no row is overwritten
        meanwhile: it must copy what it needs (once: straight into a response, say) and not
        block. `wait` False: `BUSY` at once while another thread holds the lock (a put, which
        can take milliseconds), for a caller that must not stall - an event loop."""
        ring = self._rings.get(fingerprint)
        if ring is None:
            return None
        # A put under way (`put_behind`'s, say) may be keeping these very texts: no early no.
        if not self._lock.locked() and not _may_hold_first(ring, joined, count):
            return None
        hashes = text_hashes(joined, count)  # outside the lock: the longest part
        if hashes is None:
            return None
        if not self._lock.acquire(blocking=wait):
            return BUSY
        try:
            ring = self._rings.get(fingerprint)
            if ring is None:
                return None
            self._rings.move_to_end(fingerprint)
            found = ring.find(hashes, joined)
            return None if found is None else use(ring.rows, *found)
        finally:
            self._lock.release()

    def lookup(self, fingerprint: str, joined: bytes, count: int) -> Kept | None:
        """The vectors of the `count` texts joined by NUL in `joined` (UTF-8), in order, or
        None unless every text is kept."""
        return self.answer(
            fingerprint,
            joined,
            count,
            lambda matrix, rows, distinct: Kept(matrix.take(rows, axis=0), distinct),
        )

    def get(self, fingerprint: str, texts: Sequence[str]) -> Kept | None:
        """`lookup` for texts as str."""
        joined = joined_texts(texts)
        return None if joined is None else self.lookup(fingerprint, joined, len(texts))

    def put(self, fingerprint: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Keep `vectors` (row i is texts[i]'s, as the cache returns it) for later requests."""
        max_rows = self._max_rows(vectors)
        if max_rows < 1 or not len(texts):
            return
        with self._lock:
            self._put_locked(self._ring(fingerprint, vectors, max_rows), texts, vectors)

    def put_behind(self, fingerprint: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """`put` on a thread of its own, for a caller whose answer need not wait for it (512
        texts of 2048-d took ~40 ms on the H200 host, after the stream's last batch: 1 % of a
        pass). The lock is taken now and held until the put is done, so a lookup that comes
        meanwhile waits for it rather than missing what was just computed. `vectors` must not
        change afterwards (the rows are copied on that thread)."""
        max_rows = self._max_rows(vectors)
        if max_rows < 1 or not len(texts):
            return
        self._lock.acquire()
        try:
            ring = self._ring(fingerprint, vectors, max_rows)
            with self._writer_lock:
                if self._writer is None:
                    self._writer = ThreadPoolExecutor(1, thread_name_prefix="hot-vectors")
                self._writer.submit(self._put_and_release, ring, texts, vectors)
        except BaseException:
            self._lock.release()
            raise

    def _put_and_release(self, ring: _Ring, texts: Sequence[str], vectors: np.ndarray) -> None:
        try:
            self._put_locked(ring, texts, vectors)
        finally:
            self._lock.release()

    def _max_rows(self, vectors: np.ndarray) -> int:
        row_cost = vectors.shape[1] * vectors.itemsize + _ENTRY_OVERHEAD + _PLANNED_TEXT_BYTES
        return self.max_bytes // row_cost

    def _ring(self, fingerprint: str, vectors: np.ndarray, max_rows: int) -> _Ring:
        """The fingerprint's ring, made now if it has none (under the lock)."""
        ring = self._rings.get(fingerprint)
        if ring is None:
            ring = self._rings[fingerprint] = _Ring(
                vectors.shape[1], vectors.dtype, max_rows, self.max_bytes
            )
        self._rings.move_to_end(fingerprint)
        return ring

    def _put_locked(self, ring: _Ring, texts: Sequence[str], vectors: np.ndarray) -> None:
        ring.put(texts, vectors)
        total = sum(r.nbytes() for r in self._rings.values())
        while total > self.max_bytes and len(self._rings) > 1:
            _, dropped = self._rings.popitem(last=False)
            total -= dropped.nbytes()

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(r.nbytes() for r in self._rings.values())

    def __len__(self) -> int:
        with self._lock:
            return sum(len(r) for r in self._rings.values())
