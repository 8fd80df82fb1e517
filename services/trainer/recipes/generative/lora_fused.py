"""A fused LoRA linear for the training hot path.

PEFT's LoRA `Linear` runs `base(x) + lora_B(lora_A(dropout(x))) * scaling`: the [tokens, out]
update is written, scaled and added in separate passes, and backward adds a separate
[tokens, in] input gradient to the base one. On a 1B model at 8k tokens that memory traffic was
estimated at ~20 ms of a 105 ms compiled step (inductor folds part of it into neighbouring
kernels; bench/generative_train.py measures what is left). Here the rank-r update is accumulated
inside the base GEMM's output (`addmm_`) and its input gradient inside the base input gradient's
GEMM; only [tokens, r] tensors are extra. The math and the parameters are PEFT's own, so state dicts and saved adapters are
unchanged; layers outside the plain case (several or no active adapters, merged, DoRA and other
variants, `lora_bias`, mixed dtypes, autocast, quantized bases) run PEFT's forward unchanged.
Eager only: `load_model` leaves PEFT's linears in place when it compiles the blocks (compiled by
torch 2.11 on CUDA, this function's backward gave all-zero LoRA gradients).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn


class _LoraLinearFn(torch.autograd.Function):
    """y = x @ W^T + b + (x_lora @ A^T * s) @ B^T on 2-D inputs, where x_lora is dropout(x), or x
    itself when `x_lora` is None (no dropout: then its input gradient joins the base one's GEMM)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, x_lora: torch.Tensor | None, weight: torch.Tensor,
                bias: torch.Tensor | None, lora_a: torch.Tensor, lora_b: torch.Tensor,
                scaling: float) -> torch.Tensor:
        lora_in = x if x_lora is None else x_lora
        # Scaling the [T, r] factor instead of the [T, out] product: same value, no extra pass.
        xa_s = (lora_in @ lora_a.t()) * scaling
        y = x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())
        y.addmm_(xa_s, lora_b.t())
        # x is only needed for grad_A (no dropout) or a trainable base weight.
        keep_x = x_lora is None or weight.requires_grad
        ctx.save_for_backward(x if keep_x else None, x_lora, weight, lora_a, lora_b, xa_s)
        ctx.scaling = scaling
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, x_lora, weight, lora_a, lora_b, xa_s = ctx.saved_tensors
        need_x, need_x_lora, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        grad_x = grad_x_lora = grad_w = grad_bias = grad_a = grad_b = None
        if need_x or need_x_lora or need_a:
            gxa = (grad @ lora_b) * ctx.scaling  # [T, r]: the gradient of x_lora @ A^T
        if need_x:
            grad_x = grad @ weight
            if x_lora is None:
                grad_x.addmm_(gxa, lora_a)
        if need_x_lora:
            grad_x_lora = gxa @ lora_a
        if need_w:
            grad_w = grad.t() @ x
        if need_bias:
            grad_bias = grad.sum(0)
        if need_a:
            grad_a = gxa.t() @ (x if x_lora is None else x_lora)
        if need_b:
            grad_b = grad.t() @ xa_s
        return grad_x, grad_x_lora, grad_w, grad_bias, grad_a, grad_b, None


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA `Linear` with the fused forward where it is exact, PEFT's own elsewhere.

    Installed by swapping the class of existing modules (`fuse_lora`), so parameters, buffers,
    hooks and state-dict keys stay those PEFT created."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._fusable_adapter(x, args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        dropout = self.lora_dropout[adapter]
        flat = x.reshape(-1, x.shape[-1])
        x_lora = None if isinstance(dropout, nn.Identity) or not dropout.training else dropout(flat)
        y = _LoraLinearFn.apply(flat, x_lora, base.weight, base.bias, self.lora_A[adapter].weight,
                                self.lora_B[adapter].weight, self.scaling[adapter])
        return y.view(*x.shape[:-1], y.shape[-1])

    def _fusable_adapter(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """The one active adapter if this call is the plain LoRA case, else None. Checked per call
        because adapters can be switched, merged or disabled after the swap."""
        if args or kwargs or self.disable_adapters or self.merged:
            return None
        active = self.active_adapters
        if len(active) != 1 or active[0] not in self.lora_A:
            return None
        adapter = active[0]
        if adapter in self.lora_variant or self.lora_bias[adapter]:
            return None
        dtype = self.get_base_layer().weight.dtype
        if not (x.dtype == dtype == self.lora_A[adapter].weight.dtype == self.lora_B[adapter].weight.dtype):
            return None
        if torch.is_autocast_enabled(x.device.type):
            return None
        return adapter


def fuse_lora(model: nn.Module) -> int:
    """Give every PEFT LoRA `Linear` over a plain `nn.Linear` the fused forward; returns how many.

    Exact types only: quantized bases (bitsandbytes layers subclass `nn.Linear`), AdaLoRA's
    `SVDLinear` and other subclasses keep their own forward."""
    count = 0
    for module in model.modules():
        if (type(module) is LoraLinear and type(module.get_base_layer()) is nn.Linear
                and not module.fan_in_fan_out):
            module.__class__ = FusedLoraLinear
            count += 1
    return count
