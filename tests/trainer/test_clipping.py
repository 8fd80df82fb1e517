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
