"""Where work runs by default (the first GPU when there is one, else the CPU) and in what dtype."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that has it (fp32's range at half the bytes); fp32 elsewhere: on a CPU bf16
    matmuls are slow and lossy, and CPU runs stay exact for the tests."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
