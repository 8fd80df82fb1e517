"""Pooling against hand-computed values, with right and left padding."""

import pytest
import torch

from tunewire.pooling import pool

# Two rows: row 0 has 3 real tokens, row 1 has 2. Hidden size 2.
H = torch.tensor(
    [
        [[1.0, 2.0], [3.0, -4.0], [5.0, 6.0], [100.0, 100.0]],
        [[-1.0, 0.0], [7.0, 8.0], [100.0, 100.0], [100.0, 100.0]],
    ]
)
RIGHT = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def _left(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows left-padded: real tokens moved to the end, pads (garbage) in front."""
    out_h, out_m = torch.full_like(hidden, -50.0), torch.zeros_like(mask)
    for i in range(hidden.shape[0]):
        n = int(mask[i].sum())
        out_h[i, -n:] = hidden[i, :n]
        out_m[i, -n:] = 1
    return out_h, out_m


EXPECTED = {
    "mean": [[3.0, 4.0 / 3.0], [3.0, 4.0]],
    "sum": [[9.0, 4.0], [6.0, 8.0]],
    "max": [[5.0, 6.0], [7.0, 8.0]],
    "cls": [[1.0, 2.0], [-1.0, 0.0]],
    "last": [[5.0, 6.0], [7.0, 8.0]],
}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
@pytest.mark.parametrize("side", ["right", "left"])
def test_pool_matches_hand_computation(mode, side):
    hidden, mask = (H, RIGHT) if side == "right" else _left(H, RIGHT)
    got = pool(hidden, mask, mode)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(EXPECTED[mode]))


def test_last_is_the_same_vector_under_left_and_right_padding():
    hidden, mask = _left(H, RIGHT)
    torch.testing.assert_close(pool(hidden, mask, "last"), pool(H, RIGHT, "last"))
    # And under right padding the last real token is not the last position.
    assert not torch.equal(pool(H, RIGHT, "last"), H[:, -1])


def test_normalize_gives_unit_vectors_in_same_direction():
    raw = pool(H, RIGHT, "sum")
    unit = pool(H, RIGHT, "sum", normalize=True)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(unit * raw.norm(dim=-1, keepdim=True), raw)


def test_max_ignores_padding_even_when_it_is_larger_and_bf16_is_upcast():
    got = pool(H.to(torch.bfloat16), RIGHT, "max")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(EXPECTED["max"]))


def test_all_masked_row_gives_zeros_not_nan():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])
    for mode in ("mean", "max", "sum"):
        assert torch.equal(pool(H, mask, mode)[1], torch.zeros(2)), mode


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(H, RIGHT, "median")
