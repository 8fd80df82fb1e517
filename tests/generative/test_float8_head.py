"""The LM head's GEMMs in float8 (loss.py, `trainer.precision: fp8` with loss.FLOAT8_HEAD) on a
CPU, where the casts are real and the GEMMs emulated in float32: close to the exact head, not
equal to it, over several chunks and a token count that is not a multiple of 16; evaluation keeps
the exact head. The real `torch._scaled_mm` against this emulation is test_gpu.py's."""

from __future__ import annotations

import pytest
import torch

from services.trainer.recipes.generative import loss as loss_mod
from services.trainer.recipes.generative.data import IGNORE
from services.trainer.recipes.generative.loss import float8_fits, linear_cross_entropy


def head_inputs(device: str = "cpu", tokens: int = 87, vocab: int = 96, width: int = 64):
    torch.manual_seed(0)
    h = torch.randn(tokens, width, device=device, dtype=torch.bfloat16)
    w = (torch.randn(vocab, width, device=device) * 0.3).to(torch.bfloat16)
    labels = torch.randint(0, vocab, (tokens,), device=device)
    labels[:5] = IGNORE
    return h, w, labels


def loss_and_grads(h, w, labels, **kw) -> dict[str, torch.Tensor]:
    h = h.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    stats = linear_cross_entropy(h, w, labels, **kw)
    stats.loss_sum.backward()
    return {"loss": stats.loss_sum.detach().float(), "h": h.grad.float(), "w": w.grad.float()}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("chunk_rows", [32, 1 << 20], ids=["chunks", "one-chunk"])
def test_the_float8_head_is_close_to_the_exact_head(monkeypatch, chunk_rows):
    monkeypatch.setattr(loss_mod, "_CHUNK_ELEMENTS", 96 * chunk_rows)
    h, w, labels = head_inputs()  # 82 labelled tokens: the last 2 of a chunk take the bf16 path
    exact = loss_and_grads(h, w, labels)
    f8 = loss_and_grads(h, w, labels, float8=True, emulate=True)
    for name in ("loss", "h", "w"):
        error = relative(f8[name], exact[name])
        # e4m3 operands, e5m2 gradients: a few % per element, less after the sums.
        assert 0 < error < (0.01 if name == "loss" else 0.1), (name, error)


def test_evaluation_keeps_the_exact_head():
    h, w, labels = head_inputs()
    with torch.no_grad():
        exact = linear_cross_entropy(h, w, labels)
        f8 = linear_cross_entropy(h, w, labels, float8=True, emulate=True)
    assert torch.equal(exact.loss_sum, f8.loss_sum) and torch.equal(exact.n_correct, f8.n_correct)


def test_only_a_head_of_multiples_of_16_fits():
    assert float8_fits(torch.empty(128256, 2048))
    assert not float8_fits(torch.empty(40, 64)) and not float8_fits(torch.empty(96, 24))
