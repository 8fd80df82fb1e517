"""FP8 training on Hopper (`trainer.precision: fp8`): full fine-tuning through torchao's float8
training, LoRA through the fused LoRA operator's float8 base GEMMs.

Full fine-tuning: torchao's `convert_to_float8_training` swaps `nn.Linear` modules for its
`Float8Linear`: the weights stay bf16 parameters (the optimizer, checkpoints and the artifact see
the usual tensors under the usual names), and each GEMM casts its operands to float8 with dynamic
scales on the fly, forward and backward. The decoder's linears are converted; the LM head is not
(the fused loss reads its weight directly, and a float8 head costs accuracy for little speed), nor
the embeddings (no GEMM).

LoRA: the adapted linears keep their plain bf16 base and run the fused LoRA operator
(lora_fused.py) with the base GEMMs (forward, and the input gradient; a frozen base has no weight
gradient) in float8 with torchao's tensorwise numerics (float8_gemm.py), the rank-r branch in
bf16. Under torchao's swap they would leave the fused path for PEFT's forward and cost what the
float8 GEMMs save (bench/results/generative_train_h200.md). Linears no fused layer takes (not
adapted, or a LoRA variant PEFT runs itself) get torchao's swap, after PEFT has wrapped them.

torchao's float8 is built for torch.compile (inductor fuses the amax, scale and cast passes);
eagerly those passes run as separate kernels, so `trainer.compile: true` is where it pays.
torchao is an optional dependency (the `gpu` extra); float8 GEMMs need compute capability 8.9+
(Ada, Hopper). Where either is missing the job fails naming the key.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import torch
from torch import nn

from services.trainer.recipes.generative.errors import PreconditionError

KEY = "trainer.precision"
MIN_CAPABILITY = (8, 9)
# torchao's recipe. Tensorwise: one dynamic scale per tensor, cuBLAS's float8 GEMM; rowwise: a
# scale per row (CUTLASS), more accurate, more cast work. Chosen on the H200 by throughput with
# the loss criterion met: bench/results/fp8_convergence_h200.md.
RECIPE = "tensorwise"


def unavailable(device: torch.device) -> str | None:
    """Why float8 training cannot run on `device` (None when it can). Asked at admission too:
    the trainer's machine and environment are its workers'."""
    if importlib.util.find_spec("torchao") is None:
        return "fp8 needs the torchao package (the `gpu` extra), which is not installed here"
    if device.type != "cuda":
        return (
            "fp8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper); "
            "none is available here"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (
            f"fp8 needs compute capability 8.9 or newer (Ada, Hopper); "
            f"{torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}"
        )
    return None


def check_available(device: torch.device) -> None:
    """Refuse, naming the key, where float8 training cannot run on `device`."""
    why = unavailable(device)
    if why is not None:
        raise PreconditionError(f"{KEY}: {why}")


def float8_config(recipe: str, *, emulate: bool = False):
    """torchao's config for `recipe`. `pad_inner_dim`: a packed batch holds rows × row_len
    tokens, any count, and the weight-gradient GEMM's inner dimension is that count, which
    `torch._scaled_mm` needs to be a multiple of 16 (padding is a no-op when it is).
    `emulate` runs the casts but GEMMs in high precision: for tests on a CPU only."""
    from torchao.float8 import Float8LinearConfig

    config = Float8LinearConfig.from_recipe_name(recipe)
    return dataclasses.replace(config, pad_inner_dim=True, emulate=emulate)


def eligible(module: nn.Module, head: nn.Module | None) -> bool:
    """A plain linear layer other than the LM head, both of whose dims are multiples of 16
    (`torch._scaled_mm`'s requirement)."""
    return (
        type(module) is nn.Linear
        and module is not head
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
    )


def convert(model: nn.Module, device: torch.device, *, skip: list[nn.Module] = ()) -> int:
    """Swap the eligible linears of `model` (other than those in `skip`) for torchao's
    `Float8Linear` with the `RECIPE` of the moment (the benches compare recipes by setting it);
    returns how many. Fails naming the key where float8 cannot run."""
    check_available(device)
    return convert_linears(model, float8_config(RECIPE), skip=skip)


def convert_linears(model: nn.Module, config, *, skip: list[nn.Module] = ()) -> int:
    """The swap itself (no device check: tests on a CPU pass an emulating `config`)."""
    from torchao.float8 import convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    head = model.get_output_embeddings()
    skipped = {id(m) for m in skip}
    convert_to_float8_training(
        model,
        config=config,
        module_filter_fn=lambda module, _fqn: eligible(module, head) and id(module) not in skipped,
    )
    return sum(type(m) is Float8Linear for m in model.modules())


def adapter_modules(model: nn.Module) -> list[nn.Module]:
    """The adapters' own modules (LoRA's A and B are `nn.Linear`s): trained in bf16, never
    swapped for float8."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found = []
    for layer in model.modules():
        if isinstance(layer, BaseTunerLayer):
            for name in layer.adapter_layer_names:
                found.extend(getattr(layer, name).modules())
    return found


def counts(model: nn.Module) -> tuple[int, int]:
    """(torchao `Float8Linear` layers, fused LoRA layers with float8 base GEMMs) in `model`."""
    from torchao.float8.float8_linear import Float8Linear

    from services.trainer.recipes.generative.lora_fused import float8_layers

    swapped = sum(type(m) is Float8Linear for m in model.modules())
    return swapped, len(float8_layers(model))


def require_some(model: nn.Module) -> None:
    """Refuse, naming the key, a model in which no GEMM would run in float8."""
    if sum(counts(model)) == 0:
        raise PreconditionError(
            f"{KEY}: fp8 found no linear layer whose dimensions are multiples of 16 in this "
            "model; train it with precision: auto"
        )


def describe(model: nn.Module) -> str:
    """What the job's first events say about its float8 layers."""
    swapped, fused = counts(model)
    how = []
    if fused:
        how.append(f"{fused} in the fused LoRA operator, tensorwise scaling")
    if swapped:
        how.append(f"{swapped} as torchao's Float8Linear, {RECIPE} scaling")
    return (
        f"{KEY}: fp8: {swapped + fused} linear layers run float8 GEMMs ({'; '.join(how)}); "
        "the LM head, embeddings and adapter weights stay bf16"
    )
