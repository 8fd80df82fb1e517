"""How a CPU runs the embedder's forward passes: how many at once, and on how many threads.

PyTorch runs a CPU forward pass on a team of OpenMP threads (one per core by default) that meet at
a barrier after every parallel operation. When any other thread wants one of those cores - the
server's own HTTP, gRPC, tokenising and cache threads, or another process on a shared or
CPU-limited host - a team member is preempted mid-pass and the rest wait for it at every barrier:
on a 2-core VM under load, MiniLM on one short text took 300-400 ms with 2 threads and 25-35 ms
with 1, and a batch of 64 texts 1.8-2.3 s against 0.5-1.0 s (bench/results/online_serving_cpu.md).
So:
- `PARALLEL_PASSES` batches run at once, each outside the model lock (a CPU pass is synchronous,
  and a model in inference mode may run in several threads at once), instead of one pass split
  across every core: independent passes never wait for each other at a barrier;
- a small batch (up to `SMALL_BATCH_TOKENS` tokens, an online request's) runs on one thread: the
  fork/join costs more than the split saves even on an idle host;
- a larger one started while no other pass runs gets all of torch's threads (OMP_NUM_THREADS
  where set, else one per core) but one, left to the process's own Python work, so one large
  request keeps the whole machine; started beside another pass, its share of them.

(tunewire/cpu_threads.py's `intra_op_threads` sets the count around each pass.)
"""

from __future__ import annotations

import torch

SMALL_BATCH_TOKENS = 512
PARALLEL_PASSES = 2

# torch's own count, read once: OMP_NUM_THREADS where set, else one per core.
_DEFAULT = torch.get_num_threads()


def forward_threads(tokens: int, alone: bool = False) -> int:
    """Intra-op threads for a CPU forward pass over `tokens` tokens (padded or packed); `alone`:
    no other pass of the model runs as it starts."""
    if tokens <= SMALL_BATCH_TOKENS:
        return 1
    return max(1, _DEFAULT - 1 if alone else _DEFAULT // PARALLEL_PASSES)
