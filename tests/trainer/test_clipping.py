"""Gradient clipping as Ludwig's `trainer.gradient_clipping` spells it, shared by both recipes."""

import pytest
import torch

from services.trainer.clipping import clip_gradients


def _params(*grads: list[float]) -> list[torch.nn.Parameter]:
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(len(g)))
        p.grad = torch.tensor(g)
        params.append(p)
    return params


@pytest.mark.parametrize("key", ["clipglobalnorm", "clipnorm"])
def test_norm_clipping_scales_all_gradients_to_the_total_norm(key):
    params = _params([3.0, 0.0], [0.0, 4.0])  # total norm 5
    clip_gradients(params, {key: 1.0})
    assert torch.cat([p.grad for p in params]).tolist() == pytest.approx([0.6, 0.0, 0.0, 0.8])


def test_value_clipping_clamps_each_element_and_none_leaves_them():
    params = _params([3.0, -0.5], [-4.0, 0.1])
    clip_gradients(params, None)
    assert params[0].grad.tolist() == [3.0, -0.5]
    clip_gradients(params, {"clipvalue": 1.0})
    assert torch.cat([p.grad for p in params]).tolist() == pytest.approx([1.0, -0.5, -1.0, 0.1])


@pytest.mark.parametrize("dtypes", [(torch.float32,) * 3, (torch.float32, torch.float64, None)])
def test_global_norm_clipping_is_torchs_bit_for_bit(dtypes):
    """One device and dtype take the direct path, a mix goes through torch's own function; both
    give what `torch.nn.utils.clip_grad_norm_` gives, and a parameter without a gradient is
    left alone."""
    torch.manual_seed(0)
    sizes = (7, 130, 3)
    ours = [
        torch.nn.Parameter(torch.zeros(n, dtype=d or torch.float32)) for n, d in zip(sizes, dtypes)
    ]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b, d in zip(ours, theirs, dtypes):
        if d is not None:
            a.grad = torch.randn_like(a) * 3
            b.grad = a.grad.clone()
    clip_gradients(ours, {"clipglobalnorm": 0.5})
    torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    for a, b in zip(ours, theirs):
        assert (a.grad is None and b.grad is None) or torch.equal(a.grad, b.grad)
