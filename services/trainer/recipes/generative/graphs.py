"""What `trainer.compile_mode: reduce-overhead` asks of the training loop.

The compiled blocks' forward and backward are replayed as CUDA graphs (torch.compile's cudagraph
trees): one launch a block instead of one a kernel, for a step the host, not the GPU, bounds
(the fp8 LoRA step on the H200: 146 ms of CPU for 80 ms of GPU). A graph replays fixed kernels
on fixed addresses, so:

- every step must have one shape: a new shape records a new graph (and recompiles the block);
  the training batches' layouts are checked when the job starts;
- a replay overwrites the previous replay's outputs: each micro-batch begins a new step for the
  graph trees, and with gradient accumulation the gradients live in buffers of their own (a
  gradient allocated inside a graph's memory would be overwritten by the next micro-batch);
- evaluation and generation (other shapes each call, no backward) run the blocks eagerly rather
  than record a graph per shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch

from services.trainer.recipes.generative.data import Batch
from services.trainer.recipes.generative.errors import PreconditionError

MODE = "reduce-overhead"


def layout(batch: Batch) -> tuple:
    """What fixes the blocks' input shapes: rows × tokens, and for packed rows that are not
    each one whole sample, how many segments the varlen kernel gets."""
    segments = None if batch.dense or batch.cu_seqlens is None else int(batch.cu_seqlens.numel())
    return tuple(batch.input_ids.shape), batch.dense, segments, batch.attention_mask is not None


def check_one_shape(batches: Sequence[Batch], device: torch.device) -> None:
    """Every micro-batch of the epoch but the last (a short remainder) has one layout, and the
    worker has a CUDA GPU, or the job is refused before the model loads, naming the key."""
    seen = {layout(b) for b in batches[:-1]} or {layout(batches[-1])}
    if len(seen) > 1:
        raise PreconditionError(varying(seen))
    if device.type != "cuda":
        raise PreconditionError(
            f"trainer.compile_mode: {MODE} replays CUDA graphs; this worker has no CUDA GPU"
        )


def varying(seen: set[tuple]) -> str:
    """The refusal: which layouts, and why packed or padded batches vary."""
    shapes = sorted({s[0] for s in seen})
    return (
        f"trainer.compile_mode: {MODE} replays CUDA graphs recorded for one batch shape, but "
        f"this job's training batches come in {len(seen)} layouts (rows × tokens: "
        f"{', '.join(f'{r}×{n}' for r, n in shapes[:4])}{', ...' if len(shapes) > 4 else ''}; "
        "packed rows hold varying numbers of samples, padded ones vary with the longest): "
        "use samples of one length, or compile_mode: default"
    )


def begin_step() -> None:
    """Tell the graph trees a new forward begins: the previous one's outputs are dead."""
    torch.compiler.cudagraph_mark_step_begin()


def keep_gradient_buffers(params: Iterable[torch.nn.Parameter]) -> None:
    """Zeroed `.grad` buffers of their own, which backward adds into in place (the loop then
    zeroes them instead of dropping them): needed with gradient accumulation."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def eagerly() -> contextlib.AbstractContextManager:
    """Run compiled blocks as plain eager modules (evaluation, generation)."""
    return torch.compiler.set_stance("force_eager")
