"""Where an artifact comes from: chunks written into a staging folder, or a path under the roots.

Both sources end as one local directory that validation and upload read. Streamed files are
checked (relative paths only, sha256 of every file) because whatever lands here is committed to the
Hub as it is; paths are checked against the configured roots after resolving symlinks and `..`, so
a client cannot make the gateway read (and publish) anything else on its disk.

Memory: each chunk goes to disk as it arrives, so an upload holds one message at a time. gRPC
holds a received message two or three times over while it is parsed (a 60 MiB chunk cost about
170 MB), so the gateway's message limit is a few chunks' size (app.py), and `UploadSlots` caps
the uploads being received at once: beyond it a new one is RESOURCE_EXHAUSTED, not memory.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

from tunewire.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from tunewire.model_roots import under
from tunewire.paths import check_path_text

DEFAULT_MAX_RECEIVING_UPLOADS = 8


class UploadSlots:
    """At most `limit` uploads being received at once (non-blocking: a full house refuses)."""

    def __init__(self, limit: int = DEFAULT_MAX_RECEIVING_UPLOADS) -> None:
        if limit < 1:
            raise ValueError("the upload limit must be >= 1")
        self.limit = limit
        self._taken = 0
        self._lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[None]:
        with self._lock:
            if self._taken >= self.limit:
                raise ResourceExhausted(
                    f"{self.limit} uploads are being received already; retry shortly",
                    field="file",
                    reason="UPLOADS_BUSY",
                )
            self._taken += 1
        try:
            yield
        finally:
            with self._lock:
                self._taken -= 1


class Chunk(Protocol):
    """UploadFileChunk and the trainer's FileChunk have this shape."""

    path: str
    data: bytes
    last: bool
    sha256: str


def safe_relative(path: str, field: str) -> PurePosixPath:
    """A '/'-separated path that stays inside the folder it is joined to."""
    rel = PurePosixPath(path)
    check_path_text(path, field)
    if (
        not path
        or "\\" in path
        or "\x00" in path
        or rel.is_absolute()
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise InvalidArgument(f"{path!r} is not a relative path inside the artifact", field=field)
    return rel


class StagingWriter:
    """Writes a stream of chunks into `root`, one file at a time, verifying each sha256."""

    def __init__(self, root: Path, field: str = "file") -> None:
        self.root = root
        self.field = field
        self.root.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, str] = {}  # path -> sha256
        self._dirs: set[str] = set()  # folders the files so far lie in
        self._path: str | None = None
        self._fh: BinaryIO | None = None
        self._hash = hashlib.sha256()

    def write(self, chunk: Chunk) -> None:
        if self._path is None:
            rel = safe_relative(chunk.path, f"{self.field}.path")
            if chunk.path in self.done:
                raise InvalidArgument(f"{chunk.path} was sent twice", field=f"{self.field}.path")
            self._claim(rel)
            target = self.root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            self._path, self._fh, self._hash = chunk.path, target.open("wb"), hashlib.sha256()
        elif chunk.path and chunk.path != self._path:
            raise InvalidArgument(
                f"{self._path} ended without a chunk marked last", field=f"{self.field}.last"
            )
        assert self._fh is not None
        self._fh.write(chunk.data)
        self._hash.update(chunk.data)
        if chunk.last:
            self._finish(chunk.sha256)

    def _claim(self, rel: PurePosixPath) -> None:
        """A path cannot be both a file and a folder of the artifact (`a` and `a/b`)."""
        parents = [str(p) for p in rel.parents if str(p) != "."]
        if str(rel) in self._dirs:
            raise InvalidArgument(
                f"{rel} is sent as a file, but files were sent inside it as a folder",
                field=f"{self.field}.path",
            )
        file_parent = next((p for p in parents if p in self.done), None)
        if file_parent is not None:
            raise InvalidArgument(
                f"{rel} lies inside {file_parent}, which was sent as a file",
                field=f"{self.field}.path",
            )
        self._dirs.update(parents)

    def _finish(self, expected: str) -> None:
        assert self._fh is not None and self._path is not None
        self._fh.close()
        actual = self._hash.hexdigest()
        if not expected:
            raise InvalidArgument(
                f"{self._path}: the last chunk must carry the file's sha256",
                field=f"{self.field}.sha256",
            )
        if expected.lower() != actual:
            raise InvalidArgument(
                f"{self._path}: sha256 mismatch (sent {expected}, received "
                f"content hashes to {actual})",
                field=f"{self.field}.sha256",
            )
        self.done[self._path] = actual
        self._path, self._fh = None, None

    def write_all(self, chunks: Iterable[Chunk]) -> None:
        for chunk in chunks:
            self.write(chunk)
        self.close()

    def close(self) -> None:
        """End of stream: a file still open was truncated."""
        if self._fh is not None:
            self._fh.close()
            raise InvalidArgument(
                f"{self._path}: stream ended before its last chunk", field=f"{self.field}.last"
            )


def resolve_under_roots(path: str, roots: list[Path], field: str = "spec.artifact_path") -> Path:
    """The real directory `path` names, refused unless it lies under one of `roots`."""
    if not roots:
        raise PermissionDenied(
            "this gateway has no artifact roots: stream the files instead",
            field=field,
            reason="NO_ARTIFACT_ROOTS",
        )
    if not path:
        raise InvalidArgument("an artifact path is required", field=field)
    check_path_text(path, field)
    real = Path(path).expanduser().resolve()
    if not under(real, roots):
        raise PermissionDenied(
            f"{path} is outside the gateway's artifact roots",
            field=field,
            reason="OUTSIDE_ARTIFACT_ROOTS",
        )
    if not real.is_dir():
        raise NotFound(f"{path} is not a directory", field=field)
    return real
