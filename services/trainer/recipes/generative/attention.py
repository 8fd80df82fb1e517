"""Attention for training batches: varlen (flash) attention for packed batches, registered as a
transformers attention backend, and the kernel order for batches without boundaries.

A packed row holds several samples; SDPA would need a dense block-diagonal mask, which pushes it off
the flash kernel onto the slower masked one. torch's `varlen_attn` (flash attention over
cumulative sequence offsets, CUDA bf16/fp16) attends within each sample and never builds a mask.
When a call carries no `cu_seq_lens_q` (generation with a KV cache, padded batches) the backend is
plain SDPA, so the same loaded model serves training, evaluation and generation.
"""

from __future__ import annotations

import contextlib
import inspect

import torch

# Not the embedder's "tunewire_varlen": transformers' registry is per process, and that one is a
# forward-only operator that also serves bidirectional encoders.
NAME = "tunewire_varlen_causal"


def prepared_mask(device: torch.device) -> torch.Tensor:
    """What a packed batch passes as `attention_mask`: transformers takes a 4-D mask as already
    prepared and skips building one, and with it the packed-sequence check whose `.all()` made the
    host wait for the previous step at every forward. The varlen path never reads it."""
    return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)


def dense_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """SDPA's kernel order for a causal batch without padding or sample boundaries: cuDNN first
    (torch 2.11 puts flash first). On the H200 (cuDNN 9.19), for Llama-1B's heads at 8x1024
    tokens, cuDNN's causal GQA kernel took 0.54 ms per layer forward and backward against 0.74
    for dense flash (bench/attention_kernels.py), and a compiled LoRA step's GPU time fell from
    91.6 to 86.0 ms against varlen flash. Shapes cuDNN refuses fall through to flash."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ]
    return sdpa_kernel(order, set_priority=True)


def available(device: torch.device) -> bool:
    """Varlen flash attention exists in this torch and can run on `device`."""
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def register() -> str:
    """Register the backend (idempotent) and return its name for `attn_implementation`."""
    from torch.nn.attention.varlen import varlen_attn
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    native_gqa = "enable_gqa" in params

    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        cu = kwargs.get("cu_seq_lens_q")
        if cu is None:
            return sdpa_attention_forward(
                module,
                query,
                key,
                value,
                attention_mask,
                scaling=scaling,
                dropout=dropout,
                **kwargs,
            )
        # [batch, heads, len, dim] -> [tokens, heads, dim]: the batch is one flat varlen stream.
        b, hq, n, d = query.shape
        q = query.transpose(1, 2).reshape(b * n, hq, d)
        k = key.transpose(1, 2).reshape(b * n, key.shape[1], d)
        v = value.transpose(1, 2).reshape(b * n, value.shape[1], d)
        extra = dict(causal)
        if k.shape[1] != hq:
            if native_gqa:
                extra["enable_gqa"] = True
            else:
                k = k.repeat_interleave(hq // k.shape[1], dim=1)
                v = v.repeat_interleave(hq // v.shape[1], dim=1)
        m = int(kwargs["max_length_q"])
        out = varlen_attn(q, k, v, cu, cu, m, m, scale=scaling, **extra)
        return out.reshape(b, n, hq, d), None

    AttentionInterface.register(NAME, forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
