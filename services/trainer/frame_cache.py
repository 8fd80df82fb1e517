"""Parsed data sets kept in memory, bounded by bytes, least recently used evicted first.

Parsing a data set costs seconds and several times its file size in memory (each 14 MiB CSV kept
115-180 MB as a frame of Python strings). Every job and prediction reads its data set, often the
same one again, so parsed frames are worth keeping, but never all of them forever: this cache
holds at most `max_bytes` (pandas' deep memory use), and a frame larger than that is handed out
without being kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import pandas as pd
import structlog

log = structlog.get_logger(__name__)

DEFAULT_MAX_BYTES = 512 << 20


def frame_bytes(df: pd.DataFrame) -> int:
    """Memory the frame holds, strings included."""
    return int(df.memory_usage(deep=True, index=True).sum())


class FrameCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.bytes = 0
        self._frames: OrderedDict[str, tuple[pd.DataFrame, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> pd.DataFrame | None:
        with self._lock:
            entry = self._frames.get(key)
            if entry is None:
                return None
            self._frames.move_to_end(key)
            return entry[0]

    def put(self, key: str, df: pd.DataFrame) -> None:
        size = frame_bytes(df)
        if size > self.max_bytes:
            log.info("data set too large to keep parsed", dataset_id=key, bytes=size)
            return
        with self._lock:
            old = self._frames.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            while self._frames and self.bytes + size > self.max_bytes:
                _, (_, freed) = self._frames.popitem(last=False)
                self.bytes -= freed
            self._frames[key] = (df, size)
            self.bytes += size

    def discard(self, key: str) -> None:
        with self._lock:
            entry = self._frames.pop(key, None)
            if entry is not None:
                self.bytes -= entry[1]

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)
