"""The learning-rate schedule both recipes share: warmup, then decay to where Ludwig puts it."""

import math

import pytest

from services.trainer.schedule import lr_factor, scheduled
from tunewire.config.trainer import LearningRateSchedulerConfig


def test_warmup_then_linear_decay_to_zero():
    f = lr_factor(LearningRateSchedulerConfig(decay="linear", warmup_fraction=0.1), 1e-3, 100)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(99) < 0.02


def test_cosine_runs_from_the_peak_down_to_eta_min():
    peak, eta_min, total = 1e-3, 1e-4, 50
    f = lr_factor(LearningRateSchedulerConfig(decay="cosine", eta_min=eta_min), peak, total)
    rates = [peak * f(s) for s in range(total + 1)]
    assert rates[0] == pytest.approx(peak) and rates[-1] == pytest.approx(eta_min)
    assert rates[total // 2] == pytest.approx((peak + eta_min) / 2)
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_exponential_and_constant():
    f = lr_factor(
        LearningRateSchedulerConfig(decay="exponential", decay_rate=0.5, decay_steps=10), 1.0, 100
    )
    assert f(20) == pytest.approx(0.25)
    assert not scheduled(LearningRateSchedulerConfig())
    assert lr_factor(LearningRateSchedulerConfig(), 1.0, 10)(7) == 1.0
    assert math.isclose(
        lr_factor(LearningRateSchedulerConfig(warmup_fraction=0.5), 1.0, 10)(0), 0.2
    )
