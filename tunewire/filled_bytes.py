"""A `bytes` object written in place: a large message built with one copy instead of two.

gRPC sends only `bytes`, which Python builds from data that already exists: a response made of
gathered rows was a gathered array first, then a joined copy of it (2 MiB a chunk, twice). Here
the bytes object is allocated uninitialised (`PyBytes_FromStringAndSize(NULL, size)`, as C
extensions do) and filled through a writable numpy view of its storage before anyone else can
see it, which is what that C API is for. Where the interpreter is not CPython, or the check at
import fails, the bytes are filled in a bytearray and copied (correct, one copy more).
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable

import numpy as np

# Below this a copy costs nothing, and CPython may hand out shared objects for tiny sizes.
_MIN_SIZE = 256


def _allocate(size: int) -> tuple[bytes, np.ndarray]:
    """A new, unshared bytes object of `size` and a writable uint8 view of its contents."""
    out = _from_string_and_size(None, size)
    storage = (ctypes.c_ubyte * size).from_address(id(out) + _DATA_OFFSET)
    return out, np.ctypeslib.as_array(storage)


def _works() -> bool:
    """Whether writing through `_allocate`'s view is seen in the bytes (CPython's layout)."""
    try:
        out, view = _allocate(_MIN_SIZE)
        view[:] = np.arange(_MIN_SIZE, dtype=np.uint8)
        return out == bytes(range(_MIN_SIZE))
    except Exception:  # noqa: BLE001 - any failure: the copying fallback
        return False


if platform.python_implementation() == "CPython":
    _from_string_and_size = ctypes.pythonapi.PyBytes_FromStringAndSize
    _from_string_and_size.restype = ctypes.py_object
    _from_string_and_size.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
    _DATA_OFFSET = bytes.__basicsize__ - 1  # ob_sval: the header, less its 1-byte array
    IN_PLACE = _works()
else:  # pragma: no cover - the project runs on CPython
    IN_PLACE = False


def filled_bytes(size: int, fill: Callable[[np.ndarray], None]) -> bytes:
    """`size` bytes written by `fill`, which gets them as a writable uint8 array and must
    write every byte and keep no reference to the array once it returns."""
    if not IN_PLACE or size < _MIN_SIZE:
        buffer = bytearray(size)
        fill(np.frombuffer(buffer, dtype=np.uint8))
        return bytes(buffer)
    out, view = _allocate(size)
    fill(view)
    return out
