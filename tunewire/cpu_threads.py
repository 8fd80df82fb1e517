"""Running a block of CPU work on a given number of PyTorch intra-op threads, then restoring the
count: for work whose operations are too small to gain from a team of OpenMP threads, which meet
at a barrier after every parallel operation and, on a shared or CPU-limited host, wait there for
a preempted partner (the embedder's small forward passes, services/embedder/cpu_threads.py; the
trainer's small heads, services/trainer/recipes/predictive/loop.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` intra-op threads (None: as it is), then restore the previous count.
    (OpenMP's count is the calling thread's own; MKL's is process-wide, so another thread's CPU
    work in this process may run with `n` for the duration.)"""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
