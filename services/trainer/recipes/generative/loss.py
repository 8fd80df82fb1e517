"""Cross-entropy through the LM head without materialising [tokens, vocab] logits.

With a 128k vocabulary, 8k tokens of fp32 logits are 4 GiB, and autograd keeps them (plus the
softmax) for backward. Here the head matmul, log-softmax and both gradients are done chunk by chunk
inside one autograd Function's forward (the Liger "fused linear cross-entropy" idea in plain
torch): only one chunk of logits exists at a time, and backward just scales the stored gradients.
Only positions with a label are projected at all, so masked prompt tokens cost no head FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.trainer.recipes.generative.data import IGNORE

# Chunk so that one chunk's logits and gradient stay around 2 GiB (bf16) whatever the vocabulary;
# a micro-batch of 8k tokens at a 128k vocabulary is one chunk, so grad_W is one matmul.
_CHUNK_ELEMENTS = 1 << 30


def _softmax_grad(logits: torch.Tensor, targets: torch.Tensor, with_grad: bool):
    """(summed NLL, correct count, d NLL / d logits in the logits' dtype) for one chunk, in fp32.

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


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        with_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        need_h = with_grad and hidden.requires_grad
        need_w = with_grad and weight.requires_grad
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None
        fn = _chunk_fn(hidden.device)
        n_chunks = -(-hidden.shape[0] // chunk)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            t = targets[start : start + chunk]
            chunk_loss, chunk_correct, probs = fn(h @ weight.t(), t, need_h or need_w)
            loss += chunk_loss
            correct += chunk_correct
            if need_h:
                grad_h[start : start + chunk] = probs @ weight
            if need_w:
                part = probs.t() @ h
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
        return gh, gw, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor | None = None,
) -> LossStats:
    """Summed NLL of `labels` under `hidden @ weight.T`; positions labelled IGNORE are skipped.

    `hidden` is [..., d], `labels` the matching [...] already shifted (labels[i] follows token i).
    `keep`, the flat positions with a label, spares a device sync when the caller has them."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    if keep is None:
        keep = (labels != IGNORE).nonzero().squeeze(1)
    h = hidden.index_select(0, keep)
    t = labels.index_select(0, keep)
    chunk = max(1, _CHUNK_ELEMENTS // weight.shape[0])
    loss, correct = _FusedLinearCE.apply(h, weight, t, chunk, torch.is_grad_enabled())
    # torch.full, not torch.tensor: a fill on the device, no host-to-device copy to wait for.
    return LossStats(loss, torch.full((), t.shape[0], device=hidden.device), correct)
