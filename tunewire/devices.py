"""Where work runs by default (the first GPU when there is one, else the CPU) and in what dtype."""

from __future__ import annotations

import torch

from tunewire.compute_dtype_flag import COMPUTE_DTYPES
from tunewire.errors import InvalidArgument


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that has it (fp32's range at half the bytes); fp32 elsewhere: on a CPU bf16
    matmuls are slow and lossy, and CPU runs stay exact for the tests."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles, which oneDNN
    uses for bf16 matmuls); elsewhere torch emulates bf16 on a CPU, slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def chosen_compute_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """The dtype `requested` (`--compute-dtype`, one of COMPUTE_DTYPES) means on `device`; a
    bf16 request is refused (InvalidArgument naming compute_dtype) where the device cannot run
    bf16 at speed."""
    if requested not in COMPUTE_DTYPES:
        raise InvalidArgument(
            f"unknown compute dtype {requested!r} (one of {', '.join(COMPUTE_DTYPES)})",
            field="compute_dtype",
        )
    if requested == "auto":
        return compute_dtype(device)
    if requested == "bfloat16":
        if device.type not in ("cpu", "cuda"):
            raise InvalidArgument(
                f"bfloat16 is offered on CPUs and CUDA GPUs, not on {device.type}",
                field="compute_dtype",
            )
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise InvalidArgument("this GPU has no bfloat16 support", field="compute_dtype")
        if device.type == "cpu" and not cpu_has_native_bf16():
            raise InvalidArgument(
                "this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): bf16 would be "
                "emulated, slower than float32",
                field="compute_dtype",
            )
        return torch.bfloat16
    return torch.float32
