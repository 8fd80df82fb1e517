"""Recently read or computed vectors kept in memory, found by their text: the text-by-text path
without a hash or an LMDB lookup per text.

A request answered from the cache text by text (another data set sharing the texts, the same
texts in another batch order) costs, per text, the sha256 of its cache key and an LMDB lookup
and copy: ~2 us a text on a 2-core VM, most of a 2 MiB chunk of small vectors. Here each
encoder (its fingerprint, which fixes dimension and dtype) has a ring of rows in one matrix and
a dict from text to row: a request's rows are found with one dict lookup a text (Python caches a
str's hash) and gathered with one numpy `take`. Entries go in first-in first-out order (the
oldest row is overwritten), within a byte budget shared by every encoder (`max_bytes`, 0 keeps
nothing), least recently used encoder dropped first. Keyed by the fingerprint, so never stale:
a changed model has another fingerprint. Exact: the rows are copies of what the cache holds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from operator import itemgetter

import numpy as np

DEFAULT_HOT_VECTOR_BYTES = 256 * 1024 * 1024
# What a kept text costs beside its row: the dict entry, the str object, the ring's reference.
_ENTRY_OVERHEAD = 160
_FIRST_ROWS = 4096  # a ring starts this large and doubles up to its budget


class _Ring:
    """One encoder's rows: text -> row, rows overwritten oldest first once full."""

    def __init__(self, dim: int, dtype: np.dtype, max_rows: int) -> None:
        self.max_rows = max_rows
        self.rows = np.empty((min(_FIRST_ROWS, max_rows), dim), dtype=dtype)
        self.texts: list[str | None] = [None] * len(self.rows)
        self.index: dict[str, int] = {}
        self.next = 0  # the row the next new text takes
        self.full = False  # every row holds a text: `next` overwrites the oldest

    def nbytes(self) -> int:
        return self.rows.nbytes + len(self.index) * _ENTRY_OVERHEAD

    def _grow(self) -> None:
        size = min(len(self.rows) * 2, self.max_rows)
        grown = np.empty((size, self.rows.shape[1]), dtype=self.rows.dtype)
        grown[: len(self.rows)] = self.rows
        self.texts += [None] * (size - len(self.rows))
        self.rows = grown

    def put(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        index, slots, sources = self.index, [], []
        skip = max(len(texts) - self.max_rows, 0)  # more texts than rows: the last ones stay
        for i, text in enumerate(texts[skip:], skip):
            if text in index:
                continue
            if self.next == len(self.rows):
                if len(self.rows) < self.max_rows:
                    self._grow()
                else:
                    self.next, self.full = 0, True
            slot = self.next
            old = self.texts[slot]
            if old is not None:
                del index[old]
            self.texts[slot] = text
            index[text] = slot
            slots.append(slot)
            sources.append(i)
            self.next += 1
        if slots:
            self.rows[slots] = vectors[sources]

    def take(self, texts: Sequence[str]) -> np.ndarray | None:
        if not texts:
            return self.rows[:0].copy()
        try:  # itemgetter looks every text up in one C loop
            slots = itemgetter(*texts)(self.index)
        except KeyError:
            return None
        return self.rows.take(np.array(slots, dtype=np.intp).reshape(-1), axis=0)


class HotVectors:
    """Vectors by (fingerprint, text), within `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_HOT_VECTOR_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._rings: OrderedDict[str, _Ring] = OrderedDict()
        self._lock = threading.Lock()  # a gather must not read a row being overwritten

    def get(self, fingerprint: str, texts: Sequence[str]) -> np.ndarray | None:
        """[len(texts), dim] in request order (a new array), or None unless every text is kept."""
        with self._lock:
            ring = self._rings.get(fingerprint)
            if ring is None:
                return None
            self._rings.move_to_end(fingerprint)
            return ring.take(texts)

    def put(self, fingerprint: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Keep `vectors` (row i is texts[i]'s, as the cache returns it) for later requests."""
        row_cost = vectors.shape[1] * vectors.itemsize + _ENTRY_OVERHEAD
        max_rows = self.max_bytes // row_cost
        if max_rows < 1 or not len(texts):
            return
        with self._lock:
            ring = self._rings.get(fingerprint)
            if ring is None:
                ring = self._rings[fingerprint] = _Ring(vectors.shape[1], vectors.dtype, max_rows)
            self._rings.move_to_end(fingerprint)
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
            return sum(len(r.index) for r in self._rings.values())
