"""AdaLoRA's two training-time duties, which PEFT leaves to the caller's loop.

PEFT adds AdaLoRA's orthogonal regularisation inside `AdaLoraModel.forward`, and expects the loop to
call `update_and_allocate` after backward and before the gradients are cleared. Our loss reads the
decoder directly (fused head + cross-entropy), bypassing that forward, so the recipe adds the
penalty itself (`orthogonal_penalty`) and reallocates the rank budget each optimizer step
(`allocate`) while the gradients are still there.
"""

from __future__ import annotations

import torch
from torch import nn


def is_adalora(lm: nn.Module) -> bool:
    config = getattr(lm, "peft_config", {}).get("default")
    return type(config).__name__ == "AdaLoraConfig"


def orthogonal_penalty(lm: nn.Module) -> torch.Tensor:
    """`orth_reg_weight` × the mean Frobenius distance of each P·Pᵀ (A) and Qᵀ·Q (B) from I: the
    term PEFT's own forward adds to the loss, keeping the SVD factors orthogonal."""
    config = lm.peft_config["default"]
    terms = []
    for name, p in lm.base_model.model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and ".default" in name:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
            terms.append(torch.linalg.matrix_norm(cov - eye, ord="fro"))
    if not terms or config.orth_reg_weight == 0:
        return torch.zeros((), device=next(lm.parameters()).device)
    return config.orth_reg_weight * torch.stack(terms).mean()


def allocate(lm: nn.Module, step: int) -> None:
    """Update the importance scores and mask the rank budget for optimizer step `step` (1-based);
    reads the gradients, so it runs before they are cleared. At `total_step - tfinal` the final
    budget is fixed; after it the mask is held."""
    lm.base_model.update_and_allocate(step)


def rank_pattern(lm: nn.Module) -> dict[str, list[bool]] | None:
    """Which SVD triplets each adapted layer kept (None before the first reallocation); written
    into the artifact's adapter config so stock peft loads the pruned ranks."""
    return lm.peft_config["default"].rank_pattern
