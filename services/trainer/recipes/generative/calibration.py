"""The job's training data as the batches a data-driven adapter initialisation reads (EVA: the SVD
of each adapted layer's inputs; CorDA: their covariance), and the forward pass EVA runs them
through.

PEFT's EVA cycles over the batches until every layer's components converge, and skips a batch
with fewer usable tokens than components: batches are grouped to hold enough tokens, too little
data is an error before training, and a run that never converges stops with one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from services.trainer.recipes.generative.data import Sample, collate_padded
from services.trainer.recipes.generative.errors import PreconditionError

# Passes over the calibration data before EVA is declared not converging.
MAX_PASSES = 20
# Samples CorDA's covariance is taken over (PEFT: a few hundred suffice for a 4k-wide model).
CORDA_SAMPLES = 256


def eva_batches(
    samples: list[Sample],
    *,
    pad_id: int,
    device: torch.device,
    components: int,
    targets_only: bool,
) -> list[dict]:
    """This rank's training samples as padded batches of at least `components` usable tokens
    each (target positions when `targets_only`, as `eva_config.use_label_mask` has it)."""

    def usable(s: Sample) -> int:
        return s.n_target if targets_only else len(s.input_ids)

    if sum(usable(s) for s in samples) < components:
        raise PreconditionError(
            f"adapter.init_lora_weights: eva needs at least {components} "
            f"{'target ' if targets_only else ''}tokens of training data on each worker "
            "(r × eva_config.rho components per layer)"
        )
    groups: list[list[Sample]] = [[]]
    count = 0
    for s in samples:
        groups[-1].append(s)
        count += usable(s)
        if count >= components:
            groups.append([])
            count = 0
    if count < components and len(groups) > 1:  # a short tail joins the group before it
        tail = groups.pop()
        groups[-1].extend(tail)
    out = []
    for group in (g for g in groups if g):
        batch = collate_padded(group, pad_id)
        # Our labels are already shifted (labels[i] is the token after input_ids[i]): a position
        # with a label is one whose hidden state predicts a target token.
        out.append(
            {
                "input_ids": batch.input_ids.to(device),
                "attention_mask": batch.attention_mask.to(device),
                "labels": batch.labels.to(device),
            }
        )
    return out


def bounded_forward(batches: int) -> Callable:
    """PEFT's forward for EVA without the loss (labels only mask positions), refusing to go on
    past MAX_PASSES passes over the data."""
    calls = 0

    def forward(model, inputs: dict):
        nonlocal calls
        calls += 1
        if calls > MAX_PASSES * batches:
            raise PreconditionError(
                f"adapter.init_lora_weights: eva did not converge in {MAX_PASSES} passes over "
                "the training data: the layers' inputs vary in fewer directions than adapter.r × "
                "eva_config.rho (lower either, or eva_config.tau, or add varied data)"
            )
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])

    return forward


def corda_batches(samples: list[Sample], *, device: torch.device) -> list[dict]:
    """The first CORDA_SAMPLES training samples, one unpadded row each (padding would enter the
    covariance). The same on every rank: each computes the same residual base and initial
    adapter, as replicas must."""
    return [
        {"input_ids": torch.tensor([s.input_ids], device=device)} for s in samples[:CORDA_SAMPLES]
    ]
