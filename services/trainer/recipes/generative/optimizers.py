"""Ludwig's bitsandbytes optimizers (paged and 8-bit AdamW, for quantized bases on a GPU) and
`trainer.layers_to_freeze_regex`."""

from __future__ import annotations

import importlib.util
import re

import torch
from torch import nn

from services.trainer.recipes.generative.model import PreconditionError

# trainer.optimizer.type -> bitsandbytes.optim class
BITSANDBYTES = {
    "paged_adamw": "PagedAdamW",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "adamw_8bit": "AdamW8bit",
}


def bitsandbytes_optimizer(o, params: list[nn.Parameter], lr: float, device: torch.device):
    """The bitsandbytes optimizer `o.type` names, or a clear refusal where it cannot run."""
    if device.type != "cuda":
        raise PreconditionError(
            f"trainer.optimizer.type {o.type} is a bitsandbytes optimizer and needs a CUDA GPU; "
            "this job has none (use adamw)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise PreconditionError(
            f"trainer.optimizer.type {o.type} needs the bitsandbytes package, which is not "
            "installed on the trainer (use adamw)"
        )
    import bitsandbytes.optim as bnb_optim

    cls = getattr(bnb_optim, BITSANDBYTES[o.type])
    return cls(params, lr=lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def freeze_matching(model: nn.Module, pattern: str | None) -> int:
    """Stop training every parameter whose name matches `pattern` (Ludwig's
    layers_to_freeze_regex, `re.search` on the full name); returns how many were trainable."""
    if not pattern:
        return 0
    regex = re.compile(pattern)
    frozen = 0
    for name, p in model.named_parameters():
        if p.requires_grad and regex.search(name):
            p.requires_grad_(False)
            frozen += 1
    if frozen == 0:
        raise PreconditionError(
            f"trainer.layers_to_freeze_regex {pattern!r} matches no trainable parameter"
        )
    return frozen
