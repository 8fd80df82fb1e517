"""Pooling: hidden states [batch, seq, hidden] plus the attention mask -> one vector per row.

Every mode honours the mask, so a vector never depends on how much padding its batch needed, and
the positional modes (cls, last) find the first/last *real* token, so they are right under left
padding as well as right padding. Pure torch, no model here; results are float32 because pooling
bf16 states in bf16 loses precision we then cache forever.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

POOLING_MODES = ("mean", "cls", "last", "max", "sum")


def _mask(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask.to(device=hidden.device, dtype=torch.float32).unsqueeze(-1)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the real positions (a row with no real token gives zeros, not NaN)."""
    mask = _mask(hidden, attention_mask)
    total = (hidden.float() * mask).sum(dim=1)
    count = mask.sum(dim=1).clamp(min=1.0)
    return total / count


def sum_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return (hidden.float() * _mask(hidden, attention_mask)).sum(dim=1)


def max_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max over real positions; padded positions can never win."""
    real = _mask(hidden, attention_mask) > 0
    filled = hidden.float().masked_fill(~real, float("-inf"))
    pooled = filled.max(dim=1).values
    # A row without any real token would be all -inf; give it zeros instead.
    return torch.where(torch.isinf(pooled) & (pooled < 0), torch.zeros_like(pooled), pooled)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    seq = attention_mask.shape[1]
    return torch.arange(seq, device=attention_mask.device).expand_as(attention_mask)


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The first real position (index 0 under right padding, after the pads under left)."""
    mask = attention_mask.to(hidden.device).bool()
    seq = mask.shape[1]
    # Masked positions get `seq` so argmin picks the smallest real index.
    positions = _positions(mask)
    index = torch.where(mask, positions, torch.full_like(positions, seq)).argmin(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index].float()


def last_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last real position: what a causal LM has read the whole text at."""
    mask = attention_mask.to(hidden.device).bool()
    positions = _positions(mask)
    index = torch.where(mask, positions, torch.full_like(positions, -1)).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index].float()


_POOLERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean_pool,
    "cls": cls_pool,
    "last": last_pool,
    "max": max_pool,
    "sum": sum_pool,
}


def _segments(
    cu_seq_lens: torch.Tensor, device: torch.device, tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token text index and per-text length of a packed batch of `tokens` tokens. The
    output size is given, so that on a GPU the host does not wait for `lengths` to read it."""
    cu = cu_seq_lens.to(device=device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    index = torch.arange(len(lengths), device=device)
    return torch.repeat_interleave(index, lengths, output_size=tokens), lengths


def pool_packed(
    hidden: torch.Tensor, cu_seq_lens: torch.Tensor, mode: str, normalize: bool = False
) -> torch.Tensor:
    """Pool a packed batch: hidden [tokens, hidden] holding texts back to back, text i at
    cu_seq_lens[i]:cu_seq_lens[i+1]. Same results as `pool` on the padded batch; float32."""
    if mode not in _POOLERS:
        raise ValueError(f"unknown pooling {mode!r}; expected one of {POOLING_MODES}")
    cu = cu_seq_lens.to(device=hidden.device, dtype=torch.long)
    n, dim = len(cu) - 1, hidden.shape[-1]
    if mode == "cls":
        pooled = hidden[cu[:-1]].float()
    elif mode == "last":
        pooled = hidden[cu[1:] - 1].float()
    else:
        segment, lengths = _segments(cu, hidden.device, hidden.shape[0])
        if mode == "max":
            pooled = torch.full((n, dim), float("-inf"), device=hidden.device)
            pooled.scatter_reduce_(0, segment.unsqueeze(-1).expand(-1, dim), hidden.float(), "amax")
        else:
            pooled = torch.zeros((n, dim), device=hidden.device).index_add_(
                0, segment, hidden.float()
            )
            if mode == "mean":
                pooled = pooled / lengths.clamp(min=1).unsqueeze(-1).float()
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
    return pooled


def pool(
    hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str, normalize: bool = False
) -> torch.Tensor:
    """Pool with `mode` (one of POOLING_MODES) and optionally L2-normalise; returns float32."""
    try:
        pooler = _POOLERS[mode]
    except KeyError:
        raise ValueError(f"unknown pooling {mode!r}; expected one of {POOLING_MODES}") from None
    pooled = pooler(hidden, attention_mask)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
    return pooled
