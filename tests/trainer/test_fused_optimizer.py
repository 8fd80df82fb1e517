"""The predictive loop's optimizer (torch's fused kernels called directly) updates the weights as
`torch.optim`'s fused optimizer with the same settings does, bit for bit, step after step, and
without importing torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from services.trainer.fused_optimizer import build_fused_optimizer
from services.trainer.optimizer import build_optimizer
from tunewire.config.trainer import OptimizerConfig
from tunewire.errors import InvalidArgument

CASES = {
    "adam": OptimizerConfig(type="adam"),
    "adam, decay, amsgrad": OptimizerConfig(
        type="adam", weight_decay=0.01, amsgrad=True, betas=[0.8, 0.99], eps=1e-6
    ),
    "adamw": OptimizerConfig(type="adamw", weight_decay=0.05),
    "sgd": OptimizerConfig(type="sgd"),
    "sgd, momentum, decay": OptimizerConfig(type="sgd", momentum=0.9, weight_decay=0.01),
}


def reference(opt: OptimizerConfig, params, lr: float) -> torch.optim.Optimizer:
    return build_optimizer(opt, params, lr, fused=True)


@pytest.mark.parametrize("name", list(CASES))
def test_updates_are_torch_optims_fused_ones_bit_for_bit(name):
    opt = CASES[name]
    torch.manual_seed(0)
    ours_model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    theirs_model = copy.deepcopy(ours_model)
    ours = build_fused_optimizer(opt, list(ours_model.parameters()), 0.01)
    theirs = reference(opt, list(theirs_model.parameters()), 0.01)
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    for step in range(6):
        for model, optimizer in ((ours_model, ours), (theirs_model, theirs)):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            if step == 2:  # a parameter without a gradient this step is left alone
                model[2].bias.grad = None
            for group in optimizer.param_groups:  # as a schedule sets it
                group["lr"] = 0.01 * (step + 1) / 6
            optimizer.step()
        for a, b in zip(ours_model.parameters(), theirs_model.parameters(), strict=True):
            assert torch.equal(a, b), (name, step)
    assert all(p.grad is not None for p in ours_model.parameters())
    ours.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in ours_model.parameters())


def test_a_type_not_built_is_refused_by_name():
    with pytest.raises(InvalidArgument) as info:
        build_fused_optimizer(OptimizerConfig(type="paged_adamw"), [nn.Parameter(torch.ones(1))], 1)
    assert info.value.field == "trainer.optimizer.type"


def test_building_and_stepping_it_imports_no_dynamo():
    code = (
        "import sys, torch\n"
        "from services.trainer.fused_optimizer import build_fused_optimizer\n"
        "from tunewire.config.trainer import OptimizerConfig\n"
        "p = torch.nn.Parameter(torch.ones(4)); p.grad = torch.ones(4)\n"
        "build_fused_optimizer(OptimizerConfig(), [p], 0.1).step()\n"
        "assert 'torch._dynamo' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
