"""Artifact roots (symlinks and `..` resolved) and the streamed-file writer."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import pytest

from services.hub_gateway.staging import StagingWriter, resolve_under_roots
from tunewire.errors import InvalidArgument, NotFound, PermissionDenied


def test_paths_under_a_root_are_allowed(tmp_path):
    (tmp_path / "root" / "run1").mkdir(parents=True)
    assert (
        resolve_under_roots(str(tmp_path / "root" / "run1"), [tmp_path / "root"])
        == (tmp_path / "root" / "run1").resolve()
    )


def test_dotdot_and_symlinks_out_of_the_roots_are_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(PermissionDenied) as info:
        resolve_under_roots(str(root / ".." / "elsewhere"), [root])
    assert info.value.field == "spec.artifact_path"
    os.symlink(tmp_path / "elsewhere", root / "link")
    with pytest.raises(PermissionDenied):
        resolve_under_roots(str(root / "link"), [root])
    with pytest.raises(PermissionDenied, match="no artifact roots"):
        resolve_under_roots(str(root), [])
    with pytest.raises(NotFound):
        resolve_under_roots(str(root / "missing"), [root])


@dataclass
class Chunk:
    path: str
    data: bytes
    last: bool = False
    sha256: str = ""


def test_writer_checks_every_files_sha256(tmp_path):
    writer = StagingWriter(tmp_path / "s")
    data = b"hello world"
    writer.write(Chunk("sub/a.txt", data[:5]))
    writer.write(Chunk("sub/a.txt", data[5:], last=True, sha256=hashlib.sha256(data).hexdigest()))
    assert (tmp_path / "s" / "sub" / "a.txt").read_bytes() == data
    with pytest.raises(InvalidArgument, match="sha256 mismatch"):
        writer.write(Chunk("b.txt", b"x", last=True, sha256="0" * 64))
    with pytest.raises(InvalidArgument, match="must carry"):
        StagingWriter(tmp_path / "t").write(Chunk("c.txt", b"x", last=True))


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a/../../b", "a\\b", ""])
def test_writer_refuses_paths_that_leave_the_folder(tmp_path, bad):
    with pytest.raises(InvalidArgument):
        StagingWriter(tmp_path / "s").write(Chunk(bad, b"x", last=True, sha256="0" * 64))


def test_truncated_stream_is_refused(tmp_path):
    writer = StagingWriter(tmp_path / "s")
    writer.write(Chunk("a.bin", b"partial"))
    with pytest.raises(InvalidArgument, match="before its last chunk"):
        writer.close()


@pytest.mark.parametrize("order", [["a", "a/b"], ["a/b", "a"], ["x/a", "x/a/b/c"]])
def test_a_path_that_is_both_a_file_and_a_folder_is_refused(tmp_path, order):
    """Was INTERNAL (NotADirectoryError / IsADirectoryError from the filesystem)."""
    writer = StagingWriter(tmp_path / "s")
    digest = hashlib.sha256(b"x").hexdigest()
    writer.write(Chunk(order[0], b"x", last=True, sha256=digest))
    with pytest.raises(InvalidArgument) as info:
        writer.write(Chunk(order[1], b"x", last=True, sha256=digest))
    assert info.value.field == "file.path" and "file" in info.value.message


def test_upload_slots_refuse_beyond_the_limit():
    from services.hub_gateway.staging import UploadSlots
    from tunewire.errors import ResourceExhausted

    slots = UploadSlots(2)
    with slots.take(), slots.take():
        with pytest.raises(ResourceExhausted) as info:
            with slots.take():
                pass
        assert info.value.reason == "UPLOADS_BUSY"
    with slots.take():  # released again
        pass
