"""Where work runs by default: the first GPU when there is one, else the CPU."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
