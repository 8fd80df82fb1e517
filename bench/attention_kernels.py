"""Attention kernels for one packed training batch: what `attention.dense_kernels` chose from.

Llama-3.2-1B's attention (32 query heads, 8 KV heads, head dim 64), 8 samples of 1024 tokens,
bf16, causal; the time is forward + backward of one layer (CUDA events, mean of 30 after 5
warm-up calls) and the error is the largest absolute difference from the varlen output.
Rows: torch's `varlen_attn` (flash, what packed batches run), SDPA on the same batch as a dense
[8, heads, 1024, 64] tensor with each backend (GQA native, or K/V repeated), and cuDNN's ragged
(varlen) forward through aten, which torch 2.11's `varlen_attn` leaves switched off.

    python3 bench/attention_kernels.py      # needs a CUDA GPU
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.attention.varlen as varlen
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

B, L, H, HK, D = 8, 1024, 32, 8, 64
T = B * L


def timed(fn, n: int = 30) -> float:
    for _ in range(5):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def main() -> None:
    print(
        "torch",
        torch.__version__,
        "cudnn",
        torch.backends.cudnn.version(),
        torch.cuda.get_device_name(),
        "SDPA priority",
        torch._C._get_sdp_priority_order(),
    )
    dev = "cuda"
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(T, h, D, device=dev, dtype=torch.bfloat16, requires_grad=True)
        for h in (H, HK, HK)
    )
    grad = torch.randn(T, H, D, device=dev, dtype=torch.bfloat16)
    cu = torch.arange(0, T + 1, L, device=dev, dtype=torch.int32)
    params = inspect.signature(varlen.varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}

    def varlen_fwd():
        if "enable_gqa" in params:
            return varlen.varlen_attn(q, k, v, cu, cu, L, L, enable_gqa=True, **causal)
        return varlen.varlen_attn(
            q,
            k.repeat_interleave(H // HK, 1),
            v.repeat_interleave(H // HK, 1),
            cu,
            cu,
            L,
            L,
            **causal,
        )

    def varlen_step():
        out = varlen_fwd()
        out.backward(grad)
        return out

    dense = [t.detach().view(B, L, -1, D).transpose(1, 2).requires_grad_() for t in (q, k, v)]
    dense_grad = grad.view(B, L, H, D).transpose(1, 2)

    def sdpa(backend: SDPBackend, repeat: bool):
        def step():
            qd, kd, vd = dense
            if repeat:
                kd, vd = kd.repeat_interleave(H // HK, 1), vd.repeat_interleave(H // HK, 1)
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(
                    qd, kd, vd, is_causal=True, enable_gqa=not repeat
                )
            out.backward(dense_grad)
            return out

        return step

    def cudnn_ragged_fwd():
        with torch.no_grad():
            rep = H // HK
            return torch.ops.aten._cudnn_attention_forward(
                q,
                k.repeat_interleave(rep, 1),
                v.repeat_interleave(rep, 1),
                None,
                cu,
                cu,
                L,
                L,
                True,
                0.0,
                True,
                False,
            )[0]

    reference = varlen_step().detach()
    rows = [("varlen flash (packed batches)", varlen_step)]
    for name, backend in (
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("cuDNN", SDPBackend.CUDNN_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
    ):
        rows += [
            (f"SDPA dense {name}, GQA", sdpa(backend, False)),
            (f"SDPA dense {name}, K/V repeated", sdpa(backend, True)),
        ]
    rows += [
        ("cuDNN ragged, forward only", cudnn_ragged_fwd),
        ("varlen flash, forward only", lambda: torch.no_grad()(varlen_fwd)()),
    ]
    print("| kernel | ms / layer | max abs diff |\n|---|---|---|")
    for name, fn in rows:
        try:
            out = fn()
            flat = out if out.dim() == 3 else out.transpose(1, 2).reshape(T, H, D)
            err = float((flat.float() - reference.float()).abs().max())
            print(f"| {name} | {timed(fn):.3f} | {err:.4f} |", flush=True)
        except RuntimeError as exc:
            print(f"| {name} | failed: {str(exc).splitlines()[0][:80]} | - |", flush=True)
        for t in (q, k, v, *dense):
            t.grad = None


if __name__ == "__main__":
    main()
