"""Cross-entropy through the LM head without materialising [tokens, vocab] logits.

With a 128k vocabulary, 8k tokens of fp32 logits are 4 GiB, and autograd keeps them (plus the
softmax) for backward. Here the head matmul, log-softmax and both gradients are done chunk by chunk
inside one autograd Function's forward (the Liger "fused linear cross-entropy" idea in plain
torch): only one chunk of logits exists at a time, and backward just scales the stored gradients.
Only positions with a label are projected at all, so masked prompt tokens cost no head FLOPs.

With `float8` (trainer.precision: fp8, while `FLOAT8_HEAD` is on) the head's three GEMMs run in
float8 with torchao's tensorwise numerics (float8_gemm.py): hidden states and weight e4m3 for the
logits (fast accumulation), the logits' gradient e5m2 for both gradients. That gradient (softmax
minus one-hot) lies in [-1, 1], so its scale is fixed at e5m2's max, what an amax scale would be
(its amax is ~1 at every target), and the compiled softmax kernel writes it as float8 directly.
Evaluation (no gradient) keeps the bf16 head, so reported metrics are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.trainer.recipes.generative.data import IGNORE
from services.trainer.recipes.generative.float8_gemm import E4M3, E5M2, float8_mm, to_float8

# Chunk so that one chunk's logits and gradient stay around 2 GiB (bf16) whatever the vocabulary;
# a micro-batch of 8k tokens at a 128k vocabulary is one chunk, so grad_W is one matmul.
_CHUNK_ELEMENTS = 1 << 30

# The float8 head under trainer.precision: fp8. Off until its 500-step loss criterion
# (bench/fp8_convergence.py --fp8-head) is met on the H200; the benches turn it on to measure it.
FLOAT8_HEAD = False
# The logits' gradient is in [-1, 1]: this fixed scale maps its bound to e5m2's largest value.
_GRAD_SCALE = torch.finfo(E5M2).max


def _softmax_grad(logits: torch.Tensor, targets: torch.Tensor, with_grad: bool, float8: bool):
    """(summed NLL, correct count, d NLL / d logits in the logits' dtype, or e5m2 scaled by
    `_GRAD_SCALE` with `float8`) for one chunk, in fp32.

    Compiled on CUDA, where it becomes two fused passes over the logits instead of eight."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)
    picked = x.gather(1, targets[:, None]).squeeze(1)
    loss = (lse - picked).sum()
    correct = (x.argmax(dim=-1) == targets).sum()
    if not with_grad:
        return loss, correct, None
    grad = torch.exp(x - lse[:, None])
    grad = grad - torch.nn.functional.one_hot(targets, x.shape[1]).to(grad.dtype)
    if float8:
        return loss, correct, (grad * _GRAD_SCALE).to(E5M2)
    return loss, correct, grad.to(logits.dtype)


_compiled = None


def _chunk_fn(device: torch.device):
    global _compiled
    if device.type != "cuda":
        return _softmax_grad
    if _compiled is None:
        _compiled = torch.compile(_softmax_grad, dynamic=True)
    return _compiled


@dataclass
class LossStats:
    loss_sum: torch.Tensor  # summed token NLL (differentiable)
    n_tokens: torch.Tensor  # labelled tokens
    n_correct: torch.Tensor  # argmax == label


class _Float8Head:
    """The head's float8 operands, cast once a step, and its three GEMMs (`torch._scaled_mm`'s
    layouts: the first operand row-major, the second column-major, K and N multiples of 16)."""

    def __init__(
        self, hidden: torch.Tensor, weight: torch.Tensor, need_h: bool, need_w: bool, emulate: bool
    ) -> None:
        self.emulate, self.dtype = emulate, hidden.dtype
        h8, h_scale = to_float8(hidden, E4M3)
        self.h8, self.h_inv = h8.contiguous(), h_scale.reciprocal()
        w8, w_scale = to_float8(weight, E4M3)
        self.w8, self.w_inv = w8.contiguous(), w_scale.reciprocal()
        # W^T [d, vocab] row-major, with the forward's scale, for the hidden states' gradient.
        self.wt8 = to_float8(weight.t(), E4M3, w_scale)[0].contiguous() if need_h else None
        self.ht8 = self.h8.t().contiguous() if need_w else None  # h^T [d, tokens]
        self.g_inv = torch.full((), 1.0 / _GRAD_SCALE, dtype=torch.float32, device=hidden.device)

    def _mm(self, a, a_inv, b, b_inv, fast_accum: bool) -> torch.Tensor:
        return float8_mm(
            a, a_inv, b, b_inv, out_dtype=self.dtype, fast_accum=fast_accum, emulate=self.emulate
        )

    def logits(self, start: int, stop: int) -> torch.Tensor:
        return self._mm(self.h8[start:stop], self.h_inv, self.w8.t(), self.w_inv, True)

    def grad_hidden(self, probs8: torch.Tensor) -> torch.Tensor:
        return self._mm(probs8, self.g_inv, self.wt8.t(), self.w_inv, False)

    def grad_weight(self, probs8: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """probs^T @ h over the chunk's tokens; the last `tokens % 16` (a GEMM's K must be a
        multiple of 16) dequantized and added in the hidden states' dtype."""
        k = (stop - start) // 16 * 16
        out = None
        if k:
            a = probs8[:k].t().contiguous()  # [vocab, k] row-major
            b = self.ht8[:, start : start + k].contiguous().t()  # [k, d] column-major
            out = self._mm(a, self.g_inv, b, self.h_inv, False)
        if k < stop - start:
            rest = (probs8[k:].float() * self.g_inv).to(self.dtype)
            h = (self.h8[start + k : stop].float() * self.h_inv).to(self.dtype)
            part = rest.t() @ h
            out = part if out is None else out.add_(part)
        return out


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        with_grad: bool,
        float8: bool,
        emulate: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        need_h = with_grad and hidden.requires_grad
        need_w = with_grad and weight.requires_grad
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None
        fn = _chunk_fn(hidden.device)
        # Float8 where a gradient is computed (training); evaluation keeps the exact head.
        f8 = _Float8Head(hidden, weight, need_h, need_w, emulate) if float8 and with_grad else None
        n_chunks = -(-hidden.shape[0] // chunk)
        for start in range(0, hidden.shape[0], chunk):
            stop = min(start + chunk, hidden.shape[0])
            h = hidden[start:stop]
            t = targets[start:stop]
            logits = h @ weight.t() if f8 is None else f8.logits(start, stop)
            chunk_loss, chunk_correct, probs = fn(logits, t, need_h or need_w, f8 is not None)
            loss += chunk_loss
            correct += chunk_correct
            if need_h:
                grad_h[start:stop] = probs @ weight if f8 is None else f8.grad_hidden(probs)
            if need_w:
                part = probs.t() @ h if f8 is None else f8.grad_weight(probs, start, stop)
                if n_chunks == 1:
                    grad_w = part
                else:
                    grad_w = part.float() if grad_w is None else grad_w.add_(part.float())
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return loss, correct

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_correct):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_loss).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None


def float8_fits(weight: torch.Tensor) -> bool:
    """The head's GEMMs can run in float8: vocabulary and width multiples of 16."""
    return weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor | None = None,
    *,
    float8: bool = False,
    emulate: bool = False,
) -> LossStats:
    """Summed NLL of `labels` under `hidden @ weight.T`; positions labelled IGNORE are skipped.

    `hidden` is [..., d], `labels` the matching [...] already shifted (labels[i] follows token i).
    `keep`, the flat positions with a label, spares a device sync when the caller has them.
    `float8`: the head's GEMMs in float8 while training (`float8_fits` must hold; `emulate`: in
    float32, for a CPU)."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    if keep is None:
        keep = (labels != IGNORE).nonzero().squeeze(1)
    h = hidden.index_select(0, keep)
    t = labels.index_select(0, keep)
    chunk = max(1, _CHUNK_ELEMENTS // weight.shape[0])
    loss, correct = _FusedLinearCE.apply(
        h, weight, t, chunk, torch.is_grad_enabled(), float8, emulate
    )
    # torch.full, not torch.tensor: a fill on the device, no host-to-device copy to wait for.
    return LossStats(loss, torch.full((), t.shape[0], device=hidden.device), correct)
