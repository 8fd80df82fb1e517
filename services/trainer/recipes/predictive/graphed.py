"""The head's training step captured once as a CUDA graph and replayed for every full batch.

A warm-cache job's head (2048 → 256 → classes, batch 64) gives an H200 tens of microseconds of
work a step but costs the host ~1.7 ms: autograd, the modules' Python and fused Adam's launch,
some 25 kernel launches. Replayed, a step is one index copy and one graph launch. The step is the
trainer's own function, captured as it runs eagerly, so the two paths cannot drift apart.

Torch's rules for whole-step capture (docs: "CUDA Graphs", whole-network capture) shape this:
the batch is an index buffer the graph reads (the inputs already live on the device, so the
gather is inside the graph); warm-up iterations run on a side stream before capture; the
optimizer keeps its state and step count on the device (`capturable=True`); a scheduled learning
rate is a device tensor updated in place between replays; nothing in the step waits for the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# (row indices on the device, the running loss sum to add this batch's to)
Step = Callable[[torch.Tensor, torch.Tensor], None]

WARMUP_STEPS = 3


class Rewind:
    """What a training step moves, kept so it can be put back: the module's weights and buffers
    (batch-norm statistics), the optimizer's state (put back as Adam and AdamW create it: zeros,
    step 0), the running loss sum and the RNG of `device` (dropout)."""

    def __init__(
        self, module: nn.Module, optimizer: torch.optim.Optimizer, loss_sum: torch.Tensor
    ) -> None:
        self.module, self.optimizer, self.loss_sum = module, optimizer, loss_sum
        self.kept = [t.detach().clone() for t in module.state_dict().values()]
        self.device = loss_sum.device
        self.rng = (
            torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda"
            else torch.get_rng_state()
        )

    @torch.no_grad()
    def restore(self) -> None:
        for live, saved in zip(self.module.state_dict().values(), self.kept):
            live.copy_(saved)
        for state in self.optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    value.zero_()
        self.loss_sum.zero_()
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(self.rng, self.device)
        else:
            torch.set_rng_state(self.rng)


class GraphedStep:
    """`step` over `batch` rows, captured after `WARMUP_STEPS` warm-up runs on a side stream.
    The warm-up runs are real steps; all they move is rewound before capture, so the first
    replay starts where an eager first step would."""

    def __init__(
        self,
        step: Step,
        batch: int,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_sum: torch.Tensor,
    ) -> None:
        device = loss_sum.device
        self.rows = torch.arange(batch, device=device)  # the graph reads its batch from here
        rewind = Rewind(module, optimizer, loss_sum)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step(self.rows, loss_sum)
        torch.cuda.current_stream(device).wait_stream(side)
        rewind.restore()
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls on other threads (the service's other jobs) do not spoil it.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            step(self.rows, loss_sum)
        # The gradients the graph writes live in its private memory pool; kept referenced so
        # that an eager step (which sets .grad to None) cannot hand that memory to anything else.
        self.grads = [p.grad for group in optimizer.param_groups for p in group["params"]]

    def __call__(self, rows: torch.Tensor) -> None:
        """One training step on `rows` (a full batch of indices, on the device)."""
        self.rows.copy_(rows)
        self.graph.replay()
