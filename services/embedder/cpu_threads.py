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
- a small batch (up to `SMALL_BATCH_TOKENS` tokens, an online request's) runs on one thread
  (see the last paragraph);
- a larger one started while no other pass runs gets all of torch's threads (OMP_NUM_THREADS
  where set, else one per core) but one, left to the process's own Python work, so one large
  request keeps the whole machine; started beside another pass, its share of them;
- where that leaves a lone pass one thread (2 cores, or a small batch), the queued rows are split
  into `PARALLEL_PASSES` passes (`pass_budget`) that run at once, one on the request's thread and
  one on a helper, so a single request - 64 clients' rows merged by the HTTP front door - keeps
  every core busy: one pass of 62 SMS texts had used one core of two while the other idled.

A lone single-text pass also stays on one thread: two are faster on an idle host (MiniLM on one
SMS text, 5.7 against 8.2 ms) but at load 5 on 2 cores took 230-250 ms against 15-24 ms, and a
server cannot know that the host stays idle for the length of a pass.

(tunewire/cpu_threads.py's `intra_op_threads` sets the count around each pass.)
"""

from __future__ import annotations

import torch

SMALL_BATCH_TOKENS = 512
PARALLEL_PASSES = 2
# The smallest pass a request's rows are split into: below ~8 SMS texts a pass's fixed cost
# (Python dispatch of every layer's ops) is a large part of it.
MIN_SPLIT_TOKENS = 256

# torch's own count, read once: OMP_NUM_THREADS where set, else one per core.
_DEFAULT = torch.get_num_threads()


def forward_threads(tokens: int, alone: bool = False) -> int:
    """Intra-op threads for a CPU forward pass over `tokens` tokens (padded or packed); `alone`:
    no other pass of the model runs as it starts."""
    if tokens <= SMALL_BATCH_TOKENS:
        return 1
    return max(1, _DEFAULT - 1 if alone else _DEFAULT // PARALLEL_PASSES)


def pass_budget(queued_tokens: int, max_batch_tokens: int) -> int:
    """The token budget of the next CPU pass over a queue of `queued_tokens`: the queue split
    evenly over `PARALLEL_PASSES` passes, at least `MIN_SPLIT_TOKENS`, at most
    `max_batch_tokens`."""
    share = -(-queued_tokens // PARALLEL_PASSES)
    return min(max_batch_tokens, max(MIN_SPLIT_TOKENS, share))


def split_passes(queued_tokens: int, max_batch_tokens: int) -> bool:
    """Whether a request whose rows are queued should run passes beside its own: the queue makes
    more than one pass, and a lone pass over it would run on one thread anyway."""
    budget = pass_budget(queued_tokens, max_batch_tokens)
    return queued_tokens > budget and forward_threads(budget, alone=True) == 1
