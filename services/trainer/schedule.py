"""`trainer.learning_rate_scheduler` as a factor of the peak learning rate at each optimizer step:
a linear warmup over `warmup_fraction` of the steps, then linear, cosine or exponential decay (or
none). Both recipes read the section through this one function, so they agree on what it means.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tunewire.config.trainer import LearningRateSchedulerConfig


def scheduled(s: LearningRateSchedulerConfig) -> bool:
    """Whether the rate ever differs from the peak (a constant rate needs no per-step update)."""
    return s.decay is not None or s.warmup_fraction > 0


def lr_factor(s: LearningRateSchedulerConfig, peak_lr: float, total: int) -> Callable[[int], float]:
    """step (0-based, the step about to run) → factor of `peak_lr`, for `total` steps."""
    warmup = int(s.warmup_fraction * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if s.decay == "linear":
            return max(0.0, 1.0 - progress)
        if s.decay == "cosine":  # from the peak down to eta_min
            floor = s.eta_min / peak_lr
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if s.decay == "exponential":
            return s.decay_rate ** ((step - warmup) / s.decay_steps)
        return 1.0

    return factor
