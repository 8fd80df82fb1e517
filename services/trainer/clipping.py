"""`trainer.gradient_clipping` as Ludwig applies it, for both recipes: `clipglobalnorm` and
`clipnorm` each scale all gradients down to that total norm, `clipvalue` clamps each element."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def clip_gradients(params: Iterable[torch.Tensor], clipping: dict | None) -> None:
    """Clip the gradients of `params` in place. Nothing here reads a value back to the host, so
    the step stays asynchronous (and capturable in a CUDA graph)."""
    clipping = clipping or {}
    params = [p for p in params if p.grad is not None]
    for key in ("clipglobalnorm", "clipnorm"):
        if clipping.get(key):
            torch.nn.utils.clip_grad_norm_(params, float(clipping[key]))
    if clipping.get("clipvalue"):
        torch.nn.utils.clip_grad_value_(params, float(clipping["clipvalue"]))
