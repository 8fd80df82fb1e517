"""Liger's Triton kernels for the decoder (`trainer.use_liger_kernel`): fused RMSNorm, SwiGLU and
rotary embedding, forward and backward, patched into a loaded transformers model.

A well-kept library (linkedin/Liger-Kernel) rather than kernels of our own. Its fused linear
cross-entropy is not used: the recipe's loss (loss.py) already fuses the LM head with the loss
and reads the head's weight directly. Liger patches the model instance's norms and MLPs, and its
rotary function into the model type's transformers module (process-wide: a job's worker is its
own process). The package is optional and exists only for CUDA: asked for elsewhere, the job
fails with a message naming the key.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from services.trainer.recipes.generative.errors import PreconditionError

KEY = "trainer.use_liger_kernel"


def apply_liger(model: nn.Module, device: torch.device) -> None:
    """Swap in Liger's RMSNorm, SwiGLU and RoPE on `model` (before any adapter wraps it)."""
    if device.type != "cuda":
        raise PreconditionError(
            f"{KEY}: true needs a CUDA GPU (Liger's kernels are Triton); "
            "none is available to this job"
        )
    if importlib.util.find_spec("liger_kernel") is None:
        raise PreconditionError(
            f"{KEY}: true needs the liger-kernel package, which is not installed on the trainer"
        )
    from liger_kernel.transformers.monkey_patch import (
        MODEL_TYPE_TO_APPLY_LIGER_FN,
        _apply_liger_kernel_to_instance,
    )

    model_type = getattr(model.config, "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise PreconditionError(f"{KEY}: Liger has no kernels for model type {model_type!r}")
    _apply_liger_kernel_to_instance(
        model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
