"""Adam, AdamW and SGD as torch's fused kernels (`torch._fused_adam_`, `_fused_adamw_`,
`_fused_sgd_`), called the way `torch.optim`'s fused optimizers call them, without the
`torch.optim.Optimizer` class around them.

Why: `Optimizer` imports `torch._dynamo` the first time a parameter group is added or a step is
taken (its methods are wrapped in `torch._disable_dynamo`), ~1 s of CPU in a fresh process, most
of a warm predictive job's imports; and its step's own Python (profiler hooks, grouping tensors by
device and dtype, the state checks) was ~30 us of a small head's ~0.8 ms step. The kernels and
their arguments are `torch.optim`'s, so the updates are the same bit for bit
(tests/trainer/test_fused_optimizer.py holds them to `torch.optim` with `fused=True`).

What the predictive loop uses of an optimizer is here: `param_groups` (one, its `lr` set by the
schedule), `state` per parameter, `zero_grad(set_to_none=True)` and `step()`. A CUDA graph's
capturable step, and the generative recipe (schedulers, checkpoints of the optimizer's state),
keep `torch.optim` (services/trainer/optimizer.py)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from services.trainer.optimizer import settings
from tunewire.config.trainer import OptimizerConfig


class FusedOptimizer:
    """One parameter group, updated by `kind` ("adam", "adamw" or "sgd") with `settings` (lr,
    betas, eps, weight_decay, amsgrad for Adam/AdamW; lr, momentum, weight_decay for SGD)."""

    def __init__(self, kind: str, params: list[torch.nn.Parameter], **settings: Any) -> None:
        if kind not in ("adam", "adamw", "sgd"):
            raise ValueError(f"no fused kernel for optimizer {kind!r}")
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        self.kind = kind
        self.param_groups: list[dict[str, Any]] = [{"params": list(params), **settings}]
        self.state: defaultdict[torch.Tensor, dict[str, torch.Tensor]] = defaultdict(dict)
        # Adam's step counts as one float32 element per parameter: a parameter's state["step"]
        # is a 0-dim view of its element (when on the first parameter's device), so a step in
        # which every parameter has a gradient counts them all with one kernel.
        self._counts = torch.zeros(len(params), dtype=torch.float32, device=params[0].device)
        self._index = {p: i for i, p in enumerate(params)}
        # The last step's parameters with a gradient (their ids) and their grouping by device
        # and dtype: the same every step of a head's training, so not made again each step.
        self._grouped: tuple[tuple[int, ...], list[list[torch.Tensor]]] = ((), [])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient, per (device, dtype) group as
        `torch.optim` makes them."""
        group = self.param_groups[0]
        with_grad = [p for p in group["params"] if p.grad is not None]
        ids = tuple(map(id, with_grad))
        if ids != self._grouped[0]:
            by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
            for p in with_grad:
                by_kind.setdefault((p.device, p.dtype), []).append(p)
            self._grouped = (ids, list(by_kind.values()))
        if self.kind == "sgd":
            for params in self._grouped[1]:
                self._sgd(group, params)
            return
        self._count_step(with_grad, group)
        for params in self._grouped[1]:
            self._adam(group, params)

    def _count_step(self, with_grad: list[torch.Tensor], group: dict[str, Any]) -> None:
        """Adam's step count +1 for every parameter with a gradient (its state made first)."""
        for p in with_grad:
            if not self.state[p]:
                self._init_adam_state(p, bool(group["amsgrad"]))
        steps = [self.state[p]["step"] for p in with_grad]
        if len(with_grad) == len(self._index) and all(
            s._base is self._counts
            for s in steps  # noqa: SLF001 (views of the counts)
        ):
            self._counts.add_(1)
        else:
            torch._foreach_add_(steps, 1)

    def _init_adam_state(self, p: torch.Tensor, amsgrad: bool) -> None:
        """As Adam's _init_group makes it for fused=True (the step a 0-dim float32 zero)."""
        state = self.state[p]
        if p.device == self._counts.device:
            state["step"] = self._counts[self._index[p]]
        else:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _adam(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """One fused update of `params` (one device and dtype; their steps already counted)."""
        amsgrad = bool(group["amsgrad"])
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        kernel = torch._fused_adamw_ if self.kind == "adamw" else torch._fused_adam_
        beta1, beta2 = group["betas"]
        kernel(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [s["max_exp_avg_sq"] for s in states] if amsgrad else [],
            steps,
            amsgrad=amsgrad,
            lr=group["lr"],
            beta1=float(beta1),
            beta2=float(beta2),
            weight_decay=float(group["weight_decay"]),
            eps=float(group["eps"]),
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    def _sgd(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        momentum = float(group["momentum"])
        grads = [p.grad for p in params]
        buffers: list[torch.Tensor] = []
        first = False
        if momentum != 0:
            found = [self.state[p].get("momentum_buffer") for p in params]
            first = all(b is None for b in found)
            # As torch.optim's fused SGD: on the first step the kernel fills the buffers.
            buffers = [torch.empty_like(g) for g in grads] if first else found
        torch._fused_sgd_(
            params,
            grads,
            buffers,
            weight_decay=float(group["weight_decay"]),
            momentum=momentum,
            lr=group["lr"],
            dampening=0.0,
            nesterov=False,
            maximize=False,
            is_first_step=first,
            grad_scale=None,
            found_inf=None,
        )
        for p, buffer in zip(params, buffers):
            self.state[p]["momentum_buffer"] = buffer


def build_fused_optimizer(
    opt: OptimizerConfig, params: list[torch.nn.Parameter], lr: float
) -> FusedOptimizer:
    """`trainer.optimizer` as a FusedOptimizer, with Ludwig's keys as `build_optimizer` takes
    them; a type that is not built is refused naming the key."""
    return FusedOptimizer(opt.type, params, lr=lr, **settings(opt))
