"""A fused LoRA linear for the training hot path.

PEFT's LoRA `Linear` runs `base(x) + lora_B(lora_A(dropout(x))) * scaling`: the [tokens, out]
update is written, scaled and added in separate passes, and backward adds a separate
[tokens, in] input gradient to the base one. On a 1B model at 8k tokens that memory traffic was
estimated at ~20 ms of a 105 ms compiled step (inductor folds part of it into neighbouring
kernels; bench/generative_train.py measures what is left). Here the base GEMM adds onto the
rank-r product in its epilogue (`addmm_`, beta=1), in forward and for the input gradient alike;
only [tokens, r] tensors are extra. The math and the parameters are PEFT's own, so state
dicts and saved adapters are unchanged; layers outside the plain case (several or no active
adapters, merged, DoRA and other variants, `lora_bias`, a trainable base, mixed dtypes,
autocast, quantized bases) run PEFT's forward unchanged. Forward and backward are operators
that torch.compile keeps opaque, so the same layers run eagerly and inside compiled blocks.
With `trainer.precision: fp8` (`fuse_lora(model, float8=True)`) the base GEMMs run in float8 with
torchao's tensorwise numerics (float8_gemm.py) and the rank-r branch stays bf16.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from services.trainer.recipes.generative.float8_gemm import E4M3, E5M2, float8_mm, to_float8


def _alpha_mm(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * (a @ b) in one GEMM (alpha in its epilogue; beta=0, so the output is not read)."""
    return a.new_empty(a.shape[0], b.shape[1]).addmm_(a, b, beta=0, alpha=alpha)


# The GEMMs run inside two operators, which torch.compile keeps opaque (a node each) instead of
# tracing into them: traced by torch 2.11 on CUDA, in-place GEMMs inside an autograd.Function
# gave all-zero LoRA gradients, and out-of-place ones ran slower (inductor split each accumulate
# into a GEMM and an add); see bench/results/generative_train_h200.md. The operators are registered
# with `torch.library.Library` below autograd, and a thin autograd.Function joins them: a
# `custom_op` with a registered backward cost ~22 us of host time per call on CPU against
# ~8 us here, and a LoRA step on a 1B model makes 224 such calls.
_LIB = torch.library.Library("tunewire", "FRAGMENT")
_LIB.define(
    "lora_linear(Tensor x, Tensor? x_lora, Tensor weight, Tensor? bias, Tensor lora_a, "
    "Tensor lora_b, float scaling) -> (Tensor, Tensor)"
)
_LIB.define(
    "lora_linear_backward(Tensor grad, Tensor lora_in, Tensor weight, Tensor lora_a, "
    "Tensor lora_b, Tensor xa_s, float scaling, bool fold) -> (Tensor, Tensor, Tensor, Tensor)"
)


def _lora_linear(
    x: torch.Tensor,
    x_lora: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, xa_s): y = x @ W^T + b + xa_s @ B^T with xa_s = (x_lora @ A^T) * s on 2-D inputs, where
    x_lora is dropout(x), or x itself when None. xa_s is returned for the backward to keep."""
    lora_in = x if x_lora is None else x_lora
    # Scaling the [T, r] factor instead of the [T, out] product: same value, no extra pass.
    xa_s = _alpha_mm(lora_in, lora_a.t(), scaling)
    # The rank-r product is written first and the base GEMM adds onto it (beta=1): the base GEMM
    # is compute-bound, so reading [T, out] in its epilogue costs little; the other order made
    # the small GEMM read and rewrite [T, out], a memory-bound pass per layer.
    y = xa_s @ lora_b.t() if bias is None else torch.addmm(bias, xa_s, lora_b.t())
    y.addmm_(x, weight.t())
    return y, xa_s


def _lora_linear_backward(
    grad: torch.Tensor,
    lora_in: torch.Tensor,
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    xa_s: torch.Tensor,
    scaling: float,
    fold: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_x, gxa, grad_A, grad_B) for a frozen base. gxa is the gradient of lora_in @ A^T;
    with `fold` (no dropout: lora_in is x) its input gradient is accumulated into grad_x's GEMM."""
    gxa = _alpha_mm(grad, lora_b, scaling)  # [T, r]
    if fold:  # the same order as forward: the base GEMM adds onto the rank-r product
        grad_x = gxa @ lora_a
        grad_x.addmm_(grad, weight)
    else:
        grad_x = grad @ weight
    return grad_x, gxa, gxa.t() @ lora_in, grad.t() @ xa_s


def _lora_linear_fake(x, x_lora, weight, bias, lora_a, lora_b, scaling):
    return x.new_empty(x.shape[0], weight.shape[0]), x.new_empty(x.shape[0], lora_a.shape[0])


def _lora_linear_backward_fake(grad, lora_in, weight, lora_a, lora_b, xa_s, scaling, fold):
    return (
        grad.new_empty(grad.shape[0], weight.shape[1]),
        grad.new_empty(grad.shape[0], lora_a.shape[0]),
        torch.empty_like(lora_a),
        torch.empty_like(lora_b),
    )


# With `trainer.precision: fp8` the frozen base GEMM runs in float8 (float8_gemm.py): cuBLAS's
# float8 GEMM cannot accumulate onto an existing output, so the rank-r product is added after it
# (a [T, out] pass; the casts of x, W and the output gradient are traced around the operators,
# where a compiled block fuses them into neighbouring kernels).
_LIB.define(
    "lora_linear_fp8(Tensor x8, Tensor x_inv, Tensor w8, Tensor w_inv, Tensor lora_in, "
    "Tensor? bias, Tensor lora_a, Tensor lora_b, float scaling, bool emulate) -> (Tensor, Tensor)"
)
_LIB.define(
    "lora_linear_fp8_backward(Tensor grad, Tensor g8, Tensor g_inv, Tensor wt8, Tensor w_inv, "
    "Tensor lora_in, Tensor lora_a, Tensor lora_b, Tensor xa_s, float scaling, bool fold, "
    "bool emulate) -> (Tensor, Tensor, Tensor, Tensor)"
)


def _lora_linear_fp8(x8, x_inv, w8, w_inv, lora_in, bias, lora_a, lora_b, scaling, emulate):
    """(y, xa_s) as `_lora_linear`, the base GEMM from float8 x8 [T, in] and w8 [out, in]."""
    xa_s = _alpha_mm(lora_in, lora_a.t(), scaling)
    y = float8_mm(
        x8,
        x_inv,
        w8.t(),
        w_inv,
        out_dtype=lora_in.dtype,
        fast_accum=True,  # torchao's choice for the forward GEMM
        emulate=emulate,
        bias=bias,
    )
    y.addmm_(xa_s, lora_b.t())
    return y, xa_s


def _lora_linear_fp8_backward(
    grad, g8, g_inv, wt8, w_inv, lora_in, lora_a, lora_b, xa_s, scaling, fold, emulate
):
    """As `_lora_linear_backward`, the input gradient from float8 g8 [T, out] (e5m2) and
    wt8 = W^T [in, out] (e4m3, the forward's scale)."""
    gxa = _alpha_mm(grad, lora_b, scaling)
    grad_x = float8_mm(
        g8,
        g_inv,
        wt8.t(),
        w_inv,
        out_dtype=grad.dtype,
        fast_accum=False,  # torchao's choice for gradients: full-precision accumulation
        emulate=emulate,
    )
    if fold:
        grad_x.addmm_(gxa, lora_a)
    return grad_x, gxa, gxa.t() @ lora_in, grad.t() @ xa_s


def _lora_linear_fp8_fake(x8, x_inv, w8, w_inv, lora_in, bias, lora_a, lora_b, scaling, emulate):
    return (
        lora_in.new_empty(x8.shape[0], w8.shape[0]),
        lora_in.new_empty(x8.shape[0], lora_a.shape[0]),
    )


def _lora_linear_fp8_backward_fake(
    grad, g8, g_inv, wt8, w_inv, lora_in, lora_a, lora_b, xa_s, scaling, fold, emulate
):
    return (
        grad.new_empty(grad.shape[0], wt8.shape[0]),
        grad.new_empty(grad.shape[0], lora_a.shape[0]),
        torch.empty_like(lora_a),
        torch.empty_like(lora_b),
    )


_LIB.impl("lora_linear", _lora_linear, "CompositeExplicitAutograd")
_LIB.impl("lora_linear_backward", _lora_linear_backward, "CompositeExplicitAutograd")
torch.library.register_fake("tunewire::lora_linear", _lora_linear_fake, lib=_LIB)
torch.library.register_fake("tunewire::lora_linear_backward", _lora_linear_backward_fake, lib=_LIB)
_LIB.impl("lora_linear_fp8", _lora_linear_fp8, "CompositeExplicitAutograd")
_LIB.impl("lora_linear_fp8_backward", _lora_linear_fp8_backward, "CompositeExplicitAutograd")
torch.library.register_fake("tunewire::lora_linear_fp8", _lora_linear_fp8_fake, lib=_LIB)
torch.library.register_fake(
    "tunewire::lora_linear_fp8_backward", _lora_linear_fp8_backward_fake, lib=_LIB
)


class LoraLinearFn(torch.autograd.Function):
    """y = x @ W^T + b + (x_lora @ A^T) @ B^T * s with a frozen W and b: each pass is one operator
    call, so nothing in-place is traced."""

    @staticmethod
    def forward(ctx, x, x_lora, weight, bias, lora_a, lora_b, scaling):
        y, xa_s = torch.ops.tunewire.lora_linear(x, x_lora, weight, bias, lora_a, lora_b, scaling)
        ctx.save_for_backward(x if x_lora is None else x_lora, weight, lora_a, lora_b, xa_s)
        ctx.scaling, ctx.dropout = scaling, x_lora is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        lora_in, weight, lora_a, lora_b, xa_s = ctx.saved_tensors
        grad_x, gxa, grad_a, grad_b = torch.ops.tunewire.lora_linear_backward(
            grad, lora_in, weight, lora_a, lora_b, xa_s, ctx.scaling, not ctx.dropout
        )
        grad_x_lora = gxa @ lora_a if ctx.dropout else None
        return grad_x, grad_x_lora, None, None, grad_a, grad_b, None


class LoraLinearFp8Fn(torch.autograd.Function):
    """`LoraLinearFn` with the frozen base GEMMs (forward and input gradient) in float8: x and W
    cast to e4m3 forward, the output gradient to e5m2 backward, W^T recast with the forward's
    scale (the base is frozen: no weight gradient, so no cast of x^T or grad^T)."""

    @staticmethod
    def forward(ctx, x, x_lora, weight, bias, lora_a, lora_b, scaling, emulate):
        # Row-major operands as `torch._scaled_mm` wants them (a no-op when they already are).
        x8, x_scale = to_float8(x, E4M3)
        x8 = x8.contiguous()
        w8, w_scale = to_float8(weight, E4M3)
        w8 = w8.contiguous()
        lora_in = x if x_lora is None else x_lora
        y, xa_s = torch.ops.tunewire.lora_linear_fp8(
            x8,
            x_scale.reciprocal(),
            w8,
            w_scale.reciprocal(),
            lora_in,
            bias,
            lora_a,
            lora_b,
            scaling,
            emulate,
        )
        ctx.save_for_backward(lora_in, weight, w_scale, lora_a, lora_b, xa_s)
        ctx.scaling, ctx.dropout, ctx.emulate = scaling, x_lora is not None, emulate
        return y

    @staticmethod
    def backward(ctx, grad):
        lora_in, weight, w_scale, lora_a, lora_b, xa_s = ctx.saved_tensors
        g8, g_scale = to_float8(grad, E5M2)
        g8 = g8.contiguous()
        wt8, _ = to_float8(weight.t(), E4M3, w_scale)
        grad_x, gxa, grad_a, grad_b = torch.ops.tunewire.lora_linear_fp8_backward(
            grad,
            g8,
            g_scale.reciprocal(),
            wt8.contiguous(),
            w_scale.reciprocal(),
            lora_in,
            lora_a,
            lora_b,
            xa_s,
            ctx.scaling,
            not ctx.dropout,
            ctx.emulate,
        )
        grad_x_lora = gxa @ lora_a if ctx.dropout else None
        return grad_x, grad_x_lora, None, None, grad_a, grad_b, None, None


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA `Linear` with the fused forward where it is exact, PEFT's own elsewhere.

    Installed by swapping the class of existing modules (`fuse_lora`), so parameters, buffers,
    hooks and state-dict keys stay those PEFT created. `float8` (set by `fuse_lora`): the base
    GEMMs run in float8 (`LoraLinearFp8Fn`), emulated in float32 where `float8_emulate`."""

    float8: bool = False
    float8_emulate: bool = False

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._fusable_adapter(x, args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        dropout = self.lora_dropout[adapter]
        flat = x.reshape(-1, x.shape[-1])
        x_lora = None if isinstance(dropout, nn.Identity) or not dropout.training else dropout(flat)
        args = (
            flat,
            x_lora,
            base.weight,
            base.bias,
            self.lora_A[adapter].weight,
            self.lora_B[adapter].weight,
            self.scaling[adapter],
        )
        if self.float8:
            y = LoraLinearFp8Fn.apply(*args, self.float8_emulate)
        else:
            y = LoraLinearFn.apply(*args)
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
        base = self.get_base_layer()
        if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
            return None  # the fused backward is for a frozen base (LoRA's own case)
        dtype = base.weight.dtype
        if not (
            x.dtype
            == dtype
            == self.lora_A[adapter].weight.dtype
            == self.lora_B[adapter].weight.dtype
        ):
            return None
        if torch.is_autocast_enabled(x.device.type):
            return None
        return adapter


def fuse_lora(model: nn.Module, float8: bool = False, *, emulate: bool = False) -> int:
    """Give every PEFT LoRA `Linear` over a plain `nn.Linear` the fused forward; returns how many.

    Exact types only: quantized bases (bitsandbytes layers subclass `nn.Linear`), AdaLoRA's
    `SVDLinear` and other subclasses keep their own forward. `float8`: the bases whose dimensions
    `torch._scaled_mm` takes (multiples of 16) run their GEMMs in float8 (`emulate`: in float32,
    for a CPU); `float8_layers` counts them."""
    count = 0
    for module in model.modules():
        if (
            type(module) is LoraLinear
            and type(module.get_base_layer()) is nn.Linear
            and not module.fan_in_fan_out
        ):
            module.__class__ = FusedLoraLinear
            base = module.get_base_layer()
            if float8 and base.in_features % 16 == 0 and base.out_features % 16 == 0:
                module.float8, module.float8_emulate = True, emulate
            count += 1
    return count


def float8_layers(model: nn.Module) -> list[nn.Module]:
    """The fused LoRA layers whose base GEMMs run in float8, and so their base layers, which
    torchao's module swap must leave alone."""
    return [m for m in model.modules() if isinstance(m, FusedLoraLinear) and m.float8]
