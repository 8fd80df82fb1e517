"""Float8 GEMMs with tensorwise scales, for the frozen base of a fused LoRA layer.

The same numerics as torchao's tensorwise float8 training (`trainer.precision: fp8`'s recipe for
full fine-tuning): one dynamic scale per tensor, `finfo(dtype).max / amax` (computed in float64,
as torchao does, so eager and compiled agree), saturating casts, e4m3 for inputs and weights,
e5m2 for output gradients, fast accumulation for the forward GEMM only. torchao's module swap
does not fit a LoRA layer (its GEMM cannot take the rank-r branch), so the fused operator
(lora_fused.py) calls these directly. `emulate` runs the casts but the GEMM in float32: a CPU has
no float8 GEMM, and tests compare the math there.
"""

from __future__ import annotations

import math

import torch

E4M3 = torch.float8_e4m3fn  # inputs and weights: more mantissa
E5M2 = torch.float8_e5m2  # output gradients: more range
EPS = 1e-12  # torchao's floor under amax, so an all-zero tensor gets a finite scale


def to_float8(
    t: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(t * scale saturated to `dtype`, scale); `scale` is computed from t's amax when None.

    Plain tensor ops, so a compiled caller fuses the amax, the scaling and the cast into the
    kernels around them (eagerly they are separate passes)."""
    if scale is None:
        amax = torch.linalg.vector_norm(t, ord=math.inf).to(torch.float64)
        scale = (torch.finfo(dtype).max / amax.clamp(min=EPS)).to(torch.float32)
    bound = torch.finfo(dtype).max
    return (t.to(torch.float32) * scale).clamp(-bound, bound).to(dtype), scale


def float8_mm(
    a: torch.Tensor,
    a_inv: torch.Tensor,
    b: torch.Tensor,
    b_inv: torch.Tensor,
    *,
    out_dtype: torch.dtype,
    fast_accum: bool,
    emulate: bool,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """(a * a_inv) @ (b * b_inv) (+ bias) in `out_dtype`: a is [M, K] row-major, b is [K, N]
    column-major (`torch._scaled_mm`'s layout; K and N multiples of 16); a_inv and b_inv are the
    reciprocals of the quantization scales (what dequantizes)."""
    if emulate:
        out = torch.mm(a.float() * a_inv, b.float() * b_inv).to(out_dtype)
        return out if bias is None else out + bias
    return torch._scaled_mm(
        a,
        b,
        scale_a=a_inv,
        scale_b=b_inv,
        bias=bias,
        out_dtype=out_dtype,
        use_fast_accum=fast_accum,
    )
