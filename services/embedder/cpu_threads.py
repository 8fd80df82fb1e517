"""How many intra-op threads a forward pass on the CPU gets.

PyTorch runs a CPU forward pass on a team of OpenMP threads (one per core by default) that meet at
a barrier after every parallel operation. When any other thread wants one of those cores - the
server's own HTTP, gRPC, tokenising and cache threads, or another process on a shared or
CPU-limited host - a team member is preempted mid-pass and the rest wait for it at every barrier:
on a 2-core VM under load, MiniLM on one short text took 300-400 ms with 2 threads and 25-35 ms
with 1, and a batch of 64 texts 1.8-2.3 s against 0.5-1.0 s (bench/results/online_serving_cpu.md).
So:
- a small batch (up to `SMALL_BATCH_TOKENS` tokens, an online request's) runs on one thread: the
  fork/join costs more than the split saves even on an idle host, and it never waits on a
  preempted partner;
- a larger batch leaves one core to the process's own Python work (all but one of torch's
  threads), unless OMP_NUM_THREADS says how many to use, which is then honoured as given.
"""

from __future__ import annotations

import os

import torch

SMALL_BATCH_TOKENS = 512

# torch's own count, read once: OMP_NUM_THREADS where set, else one per core.
_DEFAULT = torch.get_num_threads()


def forward_threads(tokens: int) -> int:
    """Intra-op threads for a CPU forward pass over `tokens` tokens (padded or packed)."""
    if tokens <= SMALL_BATCH_TOKENS:
        return 1
    if os.environ.get("OMP_NUM_THREADS"):
        return _DEFAULT
    return max(1, _DEFAULT - 1)
