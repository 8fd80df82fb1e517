"""The fused LoRA operator with float8 base GEMMs (`trainer.precision: fp8` with LoRA), on a CPU
through its emulation (the casts as on a GPU, the GEMM in float32): the casts are torchao's
tensorwise ones bit for bit, the layer is PEFT's LoRA within float8's error, forward and
backward, and training through the recipe's model builder runs it. The real float8 GEMMs are
tests/generative/test_gpu.py's."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from services.trainer.recipes.generative.float8_gemm import E4M3, E5M2, float8_mm, to_float8
from services.trainer.recipes.generative.lora_fused import (
    FusedLoraLinear,
    float8_layers,
    fuse_lora,
)
from tests.generative.test_lora_fused import (
    LAYERS,
    LINEARS_PER_LAYER,
    first_layer_step,
    forward_backward,
    fused_copy,
    peft_lm,
)

needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="needs torchao (the gpu extra)"
)


@needs_torchao
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_casts_are_torchaos_tensorwise_casts(dtype):
    from torchao.float8.config import ScalingGranularity
    from torchao.float8.float8_scaling_utils import hp_tensor_to_float8_dynamic
    from torchao.float8.float8_training_tensor import LinearMMConfig

    torch.manual_seed(0)
    x = torch.randn(64, 48, dtype=torch.bfloat16) * 3
    ours, scale = to_float8(x, dtype)
    theirs = hp_tensor_to_float8_dynamic(
        x, dtype, LinearMMConfig(), scaling_granularity=ScalingGranularity.TENSORWISE
    )
    assert ours.dtype == dtype
    assert torch.equal(scale, theirs._scale)
    assert torch.equal(ours.view(torch.uint8), theirs._data.view(torch.uint8))
    # A given scale (the weight's, reused for W^T in backward) is taken as is.
    again, same = to_float8(x.t(), dtype, scale)
    assert same is scale and torch.equal(again.view(torch.uint8), ours.t().view(torch.uint8))


def test_emulated_gemm_is_the_dequantized_product():
    torch.manual_seed(0)
    a, b = torch.randn(8, 32), torch.randn(16, 32)
    a8, sa = to_float8(a, E4M3)
    b8, sb = to_float8(b, E4M3)
    out = float8_mm(
        a8,
        sa.reciprocal(),
        b8.t(),
        sb.reciprocal(),
        out_dtype=a.dtype,
        fast_accum=True,
        emulate=True,
    )
    exact = (a8.float() / sa) @ (b8.float() / sb).t()
    assert torch.allclose(out, exact, rtol=1e-6, atol=1e-6)
    assert float((out - a @ b.t()).norm() / (a @ b.t()).norm()) < 0.1  # float8's own error
    zero8, scale = to_float8(torch.zeros(4, 16), E4M3)  # amax 0: a finite scale, zeros out
    assert torch.isfinite(scale) and not zero8.float().any()


def float8_copy(model: torch.nn.Module) -> torch.nn.Module:
    fused, _ = fused_copy(model)  # bf16 fused layers
    for m in fused.modules():
        if isinstance(m, FusedLoraLinear):
            m.float8, m.float8_emulate = True, True
    return fused


def relative_errors(ref: dict, got: dict) -> dict[str, float]:
    assert ref.keys() == got.keys()
    return {
        k: float((got[k].float() - r.float()).norm() / r.float().norm()) for k, r in ref.items()
    }


def torchao_lora(model: torch.nn.Module) -> torch.nn.Module:
    """The same LoRA model over torchao's emulated Float8Linear bases (PEFT's own forward)."""
    import copy

    from services.trainer.recipes.generative import fp8

    out = copy.deepcopy(model)
    bases = [m.get_base_layer() for m in out.modules() if hasattr(m, "lora_A")]
    keep = [m for m in out.modules() if isinstance(m, torch.nn.Linear) and m not in bases]
    assert fp8.convert_linears(out, fp8.float8_config("tensorwise", emulate=True), skip=keep) == (
        LAYERS * LINEARS_PER_LAYER
    )
    return out


@needs_torchao
@pytest.mark.parametrize("lora_kwargs", [{}, {"lora_dropout": 0.1}], ids=["plain", "dropout"])
def test_float8_layers_are_peft_over_torchaos_float8_bases(lora_kwargs):
    """Logits, the input gradient and every LoRA gradient are those of PEFT's LoRA over torchao's
    tensorwise Float8Linear (the math of `trainer.precision: fp8` for full fine-tuning), up to
    float32 rounding; both are float8's error away from PEFT in float32, and the layers are
    exactly PEFT's once float8 is off."""
    ref = peft_lm(**lora_kwargs)
    ours = float8_copy(ref)
    assert len(float8_layers(ours)) == LAYERS * LINEARS_PER_LAYER
    ids = torch.randint(0, 64, (2, 12))
    exact = forward_backward(ref, ids)
    got = forward_backward(ours, ids)
    same_math = relative_errors(forward_backward(torchao_lora(ref), ids), got)
    assert max(same_math.values()) < 1e-4, same_math
    ours_err = relative_errors(exact, got)
    assert 0 < min(ours_err.values()) and max(ours_err.values()) < 0.5, ours_err  # float8 ran
    for m in float8_layers(ours):
        m.float8 = False
    assert max(relative_errors(exact, forward_backward(ours, ids)).values()) < 1e-5


def test_float8_fuse_takes_only_dims_of_multiples_of_16():
    model = peft_lm()
    assert fuse_lora(model, True, emulate=True) == LAYERS * LINEARS_PER_LAYER
    assert len(float8_layers(model)) == LAYERS * LINEARS_PER_LAYER  # 32, 48 and 16 wide
    from peft import LoraConfig, get_peft_model

    odd = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(24, 32)), LoraConfig(r=4, target_modules=["0"])
    )
    assert fuse_lora(odd, True, emulate=True) == 1 and float8_layers(odd) == []


@needs_torchao
def test_lora_fp8_model_runs_float8_fused_layers(tiny_model, monkeypatch):
    """The recipe's model builder with fp8 and LoRA on all linears: every adapted linear runs
    the fused operator in float8 (no torchao swap left), the trainable names are LoRA's over a
    plain base, the adapter trains; with LoRA on q/v only the other linears get torchao's."""
    from torchao.float8.float8_linear import Float8Linear

    from services.trainer.model_types import resolve
    from services.trainer.recipes.generative import fp8
    from services.trainer.recipes.generative.model import load_model
    from tests.generative.conftest import llm_config

    monkeypatch.setattr(fp8, "check_available", lambda device: None)
    monkeypatch.setattr(
        fp8,
        "convert",
        lambda model, device, skip=(): fp8.convert_linears(
            model, fp8.float8_config(fp8.RECIPE, emulate=True), skip=skip
        ),
    )
    # r=16: LoRA's A and B are then linears torchao could take too (it must not).
    lora = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}

    def build(adapter: dict) -> torch.nn.Module:
        raw = llm_config(tiny_model, adapter=adapter, backend={"trainer": {"use_gpu": True}})
        raw["trainer"] = {**raw.get("trainer", {}), "precision": "fp8"}
        torch.manual_seed(0)
        return load_model(resolve(raw), torch.device("cpu"), packed=True, total_steps=10)

    model = build(lora)
    assert fp8.counts(model) == (0, 2 * 7)
    assert fp8.describe(model).startswith("trainer.precision: fp8: 14 linear layers")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    ids = torch.tensor([[4, 5, 6, 7, 8, 9, 10, 11]])
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)

    partial = build({**lora, "target_modules": ["q_proj", "v_proj"]})
    assert fp8.counts(partial) == (2 * 5, 2 * 2)
    assert all(type(m.get_base_layer()) is torch.nn.Linear for m in float8_layers(partial))
    assert not any(isinstance(m, Float8Linear) for m in (model.get_output_embeddings(),))


def _cpu_float8_gemm() -> bool:
    """Whether this torch has `torch._scaled_mm` on a CPU (2.13's has)."""
    a8, scale = to_float8(torch.ones(16, 16), E4M3)
    try:
        torch._scaled_mm(a8, a8.t(), scale_a=scale, scale_b=scale, out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError):
        return False
    return True


@pytest.mark.skipif(not _cpu_float8_gemm(), reason="this torch has no float8 GEMM on a CPU")
def test_real_float8_gemms_are_the_emulation_on_a_cpu():
    """`torch._scaled_mm` itself (the path a GPU runs: operand layouts, dequantizing scales,
    bias, e5m2 by e4m3 in backward), where torch has it on a CPU, gives the emulation's model."""
    emulated = float8_copy(peft_lm(torch.bfloat16))
    real = float8_copy(peft_lm(torch.bfloat16))
    for m in float8_layers(real):
        m.float8_emulate = False
    ids = torch.randint(0, 64, (4, 32))
    errors = relative_errors(forward_backward(emulated, ids), forward_backward(real, ids))
    assert max(errors.values()) < 1e-3, errors


@pytest.mark.slow
def test_compiled_float8_decoder_layer_matches_eager():
    """The float8 layers trace without graph breaks (casts traced, GEMMs opaque) and inductor's
    fused casts give eager's numbers."""
    torch._dynamo.reset()
    layer, step = first_layer_step(float8_copy(peft_lm()))
    eager = step(layer)
    errors = relative_errors(eager, step(torch.compile(layer, fullgraph=True)))
    assert max(errors.values()) < 1e-5, errors
