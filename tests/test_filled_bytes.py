"""tunewire.filled_bytes: a bytes object written in place holds exactly what was written, and
the copying fallback gives the same bytes."""

import numpy as np
import pytest

from tunewire import filled_bytes as module


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("size", [0, 1, 255, 256, 4096, 3 << 20])
def test_the_bytes_hold_what_fill_wrote(monkeypatch, in_place, size):
    monkeypatch.setattr(module, "IN_PLACE", in_place and module.IN_PLACE)
    pattern = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)

    def fill(out: np.ndarray) -> None:
        assert out.dtype == np.uint8 and out.shape == (size,) and out.flags.writeable
        out[:] = pattern

    got = module.filled_bytes(size, fill)
    assert type(got) is bytes and got == pattern.tobytes()
    assert hash(got) == hash(pattern.tobytes())  # hashed from what was written


def test_each_call_is_a_new_object_on_cpython():
    assert module.IN_PLACE  # the test machines run CPython
    first = module.filled_bytes(1024, lambda out: out.fill(1))
    second = module.filled_bytes(1024, lambda out: out.fill(2))
    assert first == b"\x01" * 1024 and second == b"\x02" * 1024
