"""Files that are re-read when they change: token lists, certificates, Secret mounts.

A Kubernetes Secret volume swaps a `..data` symlink when the Secret changes, so the file's inode
and mtime change under the same path; `os.stat` follows the link and sees it. Checking costs one
`stat` per call (throttled by `min_interval_s`), cheap enough to do on every RPC or handshake.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class WatchedFile:
    """The bytes of `path`, re-read whenever its (inode, mtime, size) changes."""

    def __init__(self, path: Path, min_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._data: bytes | None = None
        self._checked = 0.0

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def read(self) -> tuple[bytes, bool]:
        """(content, changed since the last read). Raises OSError only if the file was never
        readable; a file that vanishes later (mid-swap) keeps its last content."""
        with self._lock:
            now = time.monotonic()
            if self._data is not None and now - self._checked < self.min_interval_s:
                return self._data, False
            self._checked = now
            try:
                signature = self._stat()
                if signature == self._signature and self._data is not None:
                    return self._data, False
                data = self.path.read_bytes()
            except OSError:
                if self._data is None:
                    raise
                return self._data, False
            changed = self._data is not None and data != self._data
            self._signature, self._data = signature, data
            return data, changed
