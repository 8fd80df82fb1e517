"""Where the head's fixed inputs and targets live while it trains, and how a batch is taken.

Fixed inputs are those that do not change during training (cached text vectors, encoded numbers
and categories); targets never change either. They go to the training device once, when they fit
in half of its free memory, and every batch is then one gather per tensor on the device, with the
row indices there too. Taking each batch with a numpy gather and a host→device copy per tensor,
plus the Python around them, was most of a warm-cache job's time on a GPU. Data too large for the
device stays in host memory and each batch is copied over, as before.
"""

from __future__ import annotations

import numpy as np
import structlog
import torch

log = structlog.get_logger(__name__)

CPU = torch.device("cpu")


def fits(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` may live on `device` for a job: at most half of its free memory, so the
    head's own activations and other work on the device (the embedder's) keep room."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 2


class SplitTensors:
    """One split's fixed inputs and targets, as tensors on `home` (where they are kept)."""

    def __init__(
        self,
        x: dict[str, np.ndarray],
        y: dict[str, np.ndarray],
        home: torch.device,
        device: torch.device,
    ) -> None:
        self.home = home
        self.device = device
        self.x = {k: torch.from_numpy(v).to(home) for k, v in x.items()}
        self.y = {k: torch.from_numpy(v).to(home) for k, v in y.items()}

    def take(self, rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """`rows` (int64, on `home`) → (inputs, targets) of those rows, on the training device."""

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, rows).to(self.device, non_blocking=True)

        return ({k: pick(v) for k, v in self.x.items()}, {k: pick(v) for k, v in self.y.items()})


def place(
    x: dict[str, dict[str, np.ndarray]], y: dict[str, dict[str, np.ndarray]], device: torch.device
) -> dict[str, SplitTensors]:
    """split → its SplitTensors: all on `device` when they fit there together, else all in host
    memory (one home for every split, so row indices live in one place)."""
    nbytes = sum(a.nbytes for per in (*x.values(), *y.values()) for a in per.values())
    home = device if fits(device, nbytes) else CPU
    if home != device:
        log.info("fixed inputs stay in host memory", device=str(device), bytes=nbytes)
    return {split: SplitTensors(x[split], y.get(split, {}), home, device) for split in x}
