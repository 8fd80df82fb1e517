"""The default state directory, and checks for path-like strings that clients send (model
paths, artifact paths, ids that become directory names) before they reach the operating system.

The OS refuses a NUL byte, a name longer than NAME_MAX or a path longer than PATH_MAX with
exceptions (ValueError, OSError ENAMETOOLONG) that are no client's business and would surface as
INTERNAL; checked here, each is an INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunewire.errors import InvalidArgument

# Where every command and service keeps its state unless told otherwise (--data-dir).
DEFAULT_DATA_DIR = ".tunewire"


def default_data_dir() -> Path:
    """`$TUNEWIRE_DATA_DIR`, else `./.tunewire`: one default for the CLI and every service."""
    return Path(os.environ.get("TUNEWIRE_DATA_DIR") or DEFAULT_DATA_DIR)


NAME_MAX = 255  # bytes per path component (ext4, xfs, tmpfs)
PATH_MAX = 4096


def check_path_text(value: str, field: str) -> str:
    """`value` unchanged when the OS can take it as a path, else InvalidArgument on `field`."""
    if "\x00" in value:
        raise InvalidArgument("contains a NUL byte", field=field)
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) >= PATH_MAX:
        raise InvalidArgument(
            f"is {len(encoded)} bytes long; paths are at most {PATH_MAX - 1}", field=field
        )
    if any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise InvalidArgument(f"has a path component longer than {NAME_MAX} bytes", field=field)
    return value
