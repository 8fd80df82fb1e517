"""Whole answers as sent, kept in memory for replays, least recently used out first.

A replayed request's whole answer is in the LMDB cache, and each replay copies it out of the
memory map into a new response (servicer.encode_response). Kept here as the bytes gRPC was
given, a replay hands the same objects over again: what a raw byte stream costs. Entries are
keyed by the encoder's fingerprint, the request's texts as they came on the wire (compared byte
for byte, so a lookup hashes them once with Python's own hash instead of computing the sha256
of the whole-answer key) and the renderer that made them (for StreamEmbed, the servicer's
chunking), so one is never stale; the byte budget, which counts the key's bytes too, bounds the
memory (0 keeps nothing). A data set larger than the budget, replayed in order, finds nothing
here and is read from the map as before.

A key may come with a sketch, a few of its bytes (the service's: the texts' size, first and last
bytes): a lookup whose sketch no kept answer has misses without hashing its key's bytes, which
for a request that is no replay (the same texts in another order, say) cost a tenth of a kept
vector answer's time, its whole texts' bytes hashed for nothing.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Hashable
from typing import Any, NamedTuple

DEFAULT_HOT_ANSWER_BYTES = 256 * 1024 * 1024


class _Entry(NamedTuple):
    rendered: Any
    size: int
    distinct: int  # texts the answer counts as cache hits
    sketch: Hashable | None = None


def rendered_size(rendered: Any) -> int | None:
    """Bytes held by an answer made of bytes (one message, or a list of chunks); None for
    anything else, which is not kept (a caller might change it)."""
    if isinstance(rendered, bytes):
        return len(rendered)
    if isinstance(rendered, list) and all(isinstance(part, bytes) for part in rendered):
        return sum(map(len, rendered))
    return None


class HotAnswers:
    def __init__(self, max_bytes: int = DEFAULT_HOT_ANSWER_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._sketches: Counter[Hashable] = Counter()  # of the kept answers' keys
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, sketch: Hashable | None = None) -> _Entry | None:
        """The answer kept under `key`; with the `sketch` it was put with, a key whose sketch
        no kept answer has is not looked up (nor hashed)."""
        if sketch is not None and sketch not in self._sketches:
            return None  # read without the lock: a put racing with it is found next time
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(
        self,
        key: Hashable,
        rendered: Any,
        distinct: int,
        key_bytes: int = 0,
        sketch: Hashable | None = None,
    ) -> None:
        """Keep `rendered` under `key`; `key_bytes` is what the key holds (counted as kept),
        `sketch` what `get` is given with it."""
        size = rendered_size(rendered)
        if size is None:
            return
        size += key_bytes
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._drop(old)
            self._entries[key] = _Entry(rendered, size, distinct, sketch)
            self._bytes += size
            if sketch is not None:
                self._sketches[sketch] += 1
            while self._bytes > self.max_bytes:
                self._drop(self._entries.popitem(last=False)[1])

    def _drop(self, entry: _Entry) -> None:
        self._bytes -= entry.size
        if entry.sketch is not None:
            self._sketches[entry.sketch] -= 1
            if not self._sketches[entry.sketch]:
                del self._sketches[entry.sketch]

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
