"""`trainer.optimizer` as a torch optimizer, for both recipes: Adam/AdamW with Ludwig's keys, or
SGD with momentum. bitsandbytes' paged and 8-bit optimizers, which Ludwig's schema lists, are built
for llm jobs on a GPU by the generative recipe (`recipes/generative/optimizers.py`) and refused for
ecd at validation; any other type is refused at admission (`check_optimizer`), never run with
another."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tunewire.config.trainer import OptimizerConfig
from tunewire.errors import InvalidArgument

if TYPE_CHECKING:  # torch is imported where an optimizer is built: the CLI checks configs
    import torch

BUILT = ("adam", "adamw", "sgd")


def check_optimizer(opt: OptimizerConfig) -> None:
    """Refuse an optimizer type that is not built, naming the key."""
    if opt.type not in BUILT:
        raise InvalidArgument(
            f"optimizer {opt.type!r} is not built (bitsandbytes' paged and 8-bit optimizers "
            f"are not installed); use one of {', '.join(BUILT)}",
            field="trainer.optimizer.type",
        )


def build_optimizer(
    opt: OptimizerConfig,
    params: Iterable[torch.nn.Parameter],
    lr: float | torch.Tensor,
    *,
    fused: bool = True,
    capturable: bool = False,
) -> torch.optim.Optimizer:
    """`fused`: one kernel per step for all parameters instead of half a dozen elementwise ops
    per parameter (the same update up to rounding). `capturable` (Adam/AdamW) keeps the step
    count on the device, for a CUDA graph; `lr` as a device tensor lets a schedule change it
    between replays."""
    import torch

    kernel = {"fused": True} if fused else {}
    if opt.type == "sgd":
        return torch.optim.SGD(list(params), lr=lr, **settings(opt), **kernel)
    cls = torch.optim.AdamW if opt.type == "adamw" else torch.optim.Adam
    return cls(list(params), lr=lr, **settings(opt), capturable=capturable, **kernel)


def settings(opt: OptimizerConfig) -> dict:
    """Ludwig's optimizer keys as torch's optimizers (and FusedOptimizer) take them."""
    check_optimizer(opt)
    if opt.type == "sgd":
        return {"momentum": opt.momentum, "weight_decay": opt.weight_decay}
    return {
        "betas": tuple(opt.betas),
        "eps": opt.eps,
        "weight_decay": opt.weight_decay,
        "amsgrad": opt.amsgrad,
    }
