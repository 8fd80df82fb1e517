"""Token-budget batching: group texts so that each padded batch stays under a token budget.

A fixed batch size pads every text to the longest one in its batch; sorting by length and filling
each batch up to `max_batch_tokens` padded tokens (rows x longest row) keeps padding small and
lets many short texts share one forward pass while a few long ones get a batch of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_BATCH_TOKENS = 16384


@dataclass(frozen=True)
class Batch:
    """Positions (into the caller's list) of the texts computed together."""

    index: list[int]
    padded_length: int

    @property
    def padded_tokens(self) -> int:
        return len(self.index) * self.padded_length


def plan_batches(lengths: list[int], max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
                 ) -> list[Batch]:
    """Batches over `lengths` (token counts), longest first, each within `max_batch_tokens`.

    Longest first so that the largest activation is allocated at the start of a request, not
    after minutes of work. A text longer than the budget gets a batch to itself."""
    if max_batch_tokens <= 0:
        raise ValueError("max_batch_tokens must be positive")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[Batch] = []
    current: list[int] = []
    longest = 0
    for i in order:
        # Sorted descending: the first text of a batch is its longest, so padding is fixed.
        width = longest or max(lengths[i], 1)
        if current and (len(current) + 1) * width > max_batch_tokens:
            batches.append(Batch(current, longest))
            current, longest = [], 0
            width = max(lengths[i], 1)
        current.append(i)
        longest = width
    if current:
        batches.append(Batch(current, longest))
    return batches
