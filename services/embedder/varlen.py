"""Padding-free (varlen) attention: a batch's texts packed into one row, attention kept per text.

A packed batch is the concatenation of its texts' tokens, `position_ids` restarting at 0 for each
text and `cu_seq_lens` (cumulative lengths) marking where texts start and end. No pad token is
ever computed and no [rows x longest] mask is built, so a batch costs its real tokens only.

The attention function registered here under ATTN_NAME serves both paths of one loaded model:
given `cu_seq_lens_q` it attends within each text (the operator `attend`) - on CUDA through
PyTorch's own varlen flash-attention kernel (`aten._flash_attention_forward`, the FA2 kernel
PyTorch ships, so no flash-attn package is needed), on CPU with SDPA per text - and without them
it is transformers' plain SDPA with the padding mask. Its mask function builds the usual SDPA
mask for padded batches and none for packed ones (which would be [tokens x tokens]).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import structlog
import torch
import torch.nn.functional as F

log = structlog.get_logger(__name__)

ATTN_NAME = "tunewire_varlen"
_registered = False
# None until the first CUDA call finds out whether the kernel takes fewer K/V heads than Q heads.
_flash_takes_gqa: bool | None = None


@dataclass(frozen=True)
class Packed:
    """Model inputs for one packed batch (CPU tensors, pinned when the target is a GPU)."""

    input_ids: torch.Tensor  # [1, tokens]
    position_ids: torch.Tensor  # [1, tokens]
    cu_seq_lens: torch.Tensor  # [texts + 1], int32
    max_length: int

    def to(self, device: torch.device) -> Packed:
        move = dict(device=device, non_blocking=True)
        return Packed(
            self.input_ids.to(**move),
            self.position_ids.to(**move),
            self.cu_seq_lens.to(**move),
            self.max_length,
        )


def pack(input_ids: list[list[int]], pin: bool = False) -> Packed:
    """Concatenate token rows; positions restart per row. `pin` for async host->GPU copies."""
    lengths = np.fromiter((len(row) for row in input_ids), dtype=np.int64, count=len(input_ids))
    cu = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    # chain.from_iterable walks the rows in C: a generator expression here cost ~2x as much of a
    # 65k-token launch's host time, under the model lock.
    flat = np.fromiter(chain.from_iterable(input_ids), dtype=np.int64, count=int(cu[-1]))
    positions = np.arange(cu[-1], dtype=np.int64) - np.repeat(cu[:-1], lengths)
    tensors = [
        torch.from_numpy(flat).unsqueeze(0),
        torch.from_numpy(positions).unsqueeze(0),
        torch.from_numpy(cu.astype(np.int32)),
    ]
    if pin:
        tensors = [t.pin_memory() for t in tensors]
    return Packed(*tensors, max_length=int(lengths.max()))


def _flash_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu: torch.Tensor,
    max_len: int,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    global _flash_takes_gqa
    if k.shape[1] != q.shape[1] and _flash_takes_gqa is not True:
        if _flash_takes_gqa is None:
            try:
                out = _flash_varlen_call(q, k, v, cu, max_len, causal, scale)
                _flash_takes_gqa = True
                return out
            except RuntimeError as exc:
                _flash_takes_gqa = False
                log.info(
                    "varlen flash kernel wants equal head counts; repeating K/V",
                    error=str(exc).splitlines()[0],
                )
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return _flash_varlen_call(q, k, v, cu, max_len, causal, scale)


def _flash_varlen_call(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu: torch.Tensor,
    max_len: int,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu, cu, max_len, max_len, 0.0, causal, False, scale=scale
    )
    return out[0]


def _sdpa_per_text(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu: torch.Tensor,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    """[tokens, heads, dim] in and out; one exact SDPA call per text (CPU, or any device).
    K/V heads are repeated up front: with `enable_gqa` the CPU falls back to its slow math
    kernel (as it does for 3-d inputs), several times slower than the fused one."""
    if k.shape[1] != q.shape[1]:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    bounds = cu.tolist()
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        # 4-d [1, heads, length, dim]: 3-d inputs take the CPU's slow math kernel too.
        qi, ki, vi = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        parts.append(
            F.scaled_dot_product_attention(qi, ki, vi, is_causal=causal, scale=scale)[0].transpose(
                0, 1
            )
        )
    return torch.cat(parts)


@torch.library.custom_op("tunewire::varlen_attention", mutates_args=())
def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu: torch.Tensor,
    max_length: int,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    """Attention within each packed text: [tokens, heads, dim] in, contiguous [tokens, q heads,
    dim] out. An opaque operator, so that torch.compile (per block, encoder.py) traces around it
    with symbolic token counts: the CPU path's per-text loop reads `cu` on the host, the GQA
    probe keeps state across calls, and neither belongs in a graph."""
    if q.is_cuda:
        out = _flash_varlen(
            q.contiguous(), k.contiguous(), v.contiguous(), cu, max_length, causal, scale
        )
    else:
        out = _sdpa_per_text(q, k, v, cu, causal, scale)
    return out.contiguous()


@attend.register_fake
def _attend_shape(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu: torch.Tensor,
    max_length: int,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2]))


def varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: query [1, heads, tokens, dim] in,
    [1, tokens, heads, dim] out."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    causal = bool(getattr(module, "is_causal", False))
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    out = attend(q, k, v, cu, int(kwargs["max_length_q"]), causal, scaling)
    return out.unsqueeze(0), None


def _mask(**kwargs) -> torch.Tensor | None:
    """SDPA's mask for padded batches; none for packed ones (varlen attention needs none)."""
    if kwargs.get("attention_mask") is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(**kwargs)


def register() -> str:
    """Register the attention and mask functions with transformers (once); returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(ATTN_NAME, varlen_attention)
        AttentionMaskInterface.register(ATTN_NAME, _mask)
        _registered = True
    return ATTN_NAME


def model_inputs(packed: Packed, token_types: bool) -> dict:
    """Keyword arguments for a transformers model's forward over one packed batch.

    The attention mask is an empty 4-d tensor, which transformers' mask builders pass through
    as a prepared mask (our attention ignores it: `cu_seq_lens_q` scopes each text). Without a
    mask they would inspect `position_ids` for packed texts and branch on the result in Python,
    which on a GPU waits on the host for every batch queued before this one: the next batch could
    then not be prepared while this one computes."""
    inputs = dict(
        input_ids=packed.input_ids,
        attention_mask=packed.input_ids.new_empty((1, 1, 0, 0), dtype=torch.bool),
        position_ids=packed.position_ids,
        cu_seq_lens_q=packed.cu_seq_lens,
        cu_seq_lens_k=packed.cu_seq_lens,
        max_length_q=packed.max_length,
        max_length_k=packed.max_length,
    )
    if token_types:  # BERT's buffered token types are only max_position long: give them
        inputs["token_type_ids"] = torch.zeros_like(packed.input_ids)
    return inputs
