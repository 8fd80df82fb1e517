"""`--compute-dtype`: the dtype an embedder's forward passes run in, for every command that
starts one (`python -m services.embedder`, `serve http`, `serve all`). No torch here: the CLI
builds its parsers before it knows whether it will need torch (tunewire/devices.py resolves it)."""

from __future__ import annotations

import argparse
import os

# "auto": bf16 on a GPU that has it, float32 on a CPU (tunewire.devices.compute_dtype).
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
ENV = "TUNEWIRE_COMPUTE_DTYPE"


def add_compute_dtype_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compute-dtype",
        "--compute_dtype",
        dest="compute_dtype",
        choices=COMPUTE_DTYPES,
        default=os.environ.get(ENV) or "auto",
        help="what the embedder's forward passes run in: auto (bf16 on a GPU, float32 on a "
        "CPU), float32, or bfloat16 (on a CPU with AVX512-BF16/AMX several times faster; its "
        "vectors differ slightly from float32's and are cached apart, and a head trained on "
        "float32 vectors refuses them; refused where the device lacks bf16) "
        f"(env {ENV})",
    )
