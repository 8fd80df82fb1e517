"""Training checkpoints: trainable weights, optimizer, scheduler, RNG and position, a folder a step.

The same code serves one process, DDP and FSDP2: torch's distributed state-dict API gathers full
(unsharded) tensors, rank 0 writes them, and on resume every rank reads the same files and takes its
shard. A folder counts only once its `complete` marker exists, so a kill mid-write leaves the
previous checkpoint as the latest. Only trainable weights are stored (an adapter is megabytes).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
_LOAD = StateDictOptions(full_state_dict=True, strict=False)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full trainable weights (a collective: every rank calls; rank 0 gets the tensors).

    Only parameters that train: a quantized base adds its frozen weights' quantization state
    (absmax, quant_map...) to the state dict as extra entries that no frozen-parameter filter
    sees."""
    inner = getattr(model, "module", model)  # DDP's wrapper; the state-dict keys omit its prefix
    trainable = {name: p for name, p in inner.named_parameters() if p.requires_grad}
    if not any(isinstance(p, DTensor) for p in trainable.values()):
        # Not sharded: copy the parameters themselves; a state_dict() call would also serialise
        # every frozen module, which 8-bit bitsandbytes layers cannot do once trained on.
        return {name: p.detach().to("cpu", copy=True) for name, p in trainable.items()}
    state = get_model_state_dict(model, options=_FULL)
    return {k: v for k, v in state.items() if k in trainable}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    set_model_state_dict(model, state, options=_LOAD)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(root: Path, step: int, model, optimizer, extra: dict, rank: int) -> Path:
    """Write checkpoint `step` under `root` and drop older ones (collective)."""
    weights = trainable_state(model)
    optim = get_optimizer_state_dict(model, optimizer, options=_FULL)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(weights, tmp / "model.pt")
        torch.save(optim, tmp / "optimizer.pt")
        torch.save(extra, tmp / "state.pt")
    _barrier()
    # Each rank keeps its own RNG stream (dropout masks differ per rank).
    torch.save(rng_state(), tmp / f"rng_{rank}.pt")
    _barrier()
    if rank == 0:
        (tmp / "complete").touch()
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in root.glob("step_*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def latest(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("step_*") if (p / "complete").exists())
    return done[-1] if done else None


def load(path: Path, model, optimizer, rank: int) -> dict:
    """Restore weights, optimizer and this rank's RNG; return the saved training state."""
    load_trainable(model, torch.load(path / "model.pt", weights_only=True))
    set_optimizer_state_dict(
        model, optimizer, torch.load(path / "optimizer.pt", weights_only=False), options=_LOAD
    )
    rng = path / f"rng_{rank}.pt"
    if rng.exists():
        set_rng_state(torch.load(rng, weights_only=False))
    return torch.load(path / "state.pt", weights_only=False)


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
