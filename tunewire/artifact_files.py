"""Which files make up an artifact folder: the ones a client streams to the hub gateway and the
gateway validates, listed by one rule on both sides."""

from __future__ import annotations

from pathlib import Path

from tunewire.errors import InvalidArgument

# Files that travel with any folder but are never part of a model: local tooling state.
_IGNORED_PARTS = {".git", ".cache", "__pycache__", ".ipynb_checkpoints"}


def list_files(root: Path) -> list[str]:
    """Every regular file under `root` as a '/'-separated relative path, sorted, tooling dirs
    excluded. Symlinks pointing outside `root` are refused: an artifact must be self-contained."""
    root = root.resolve()
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in _IGNORED_PARTS for part in rel.parts) or not path.is_file():
            continue
        if not path.resolve().is_relative_to(root):
            raise InvalidArgument(
                f"{rel.as_posix()} links outside the artifact", field="model_path"
            )
        out.append(rel.as_posix())
    return out
