"""The generative recipe on a CUDA GPU: 4- and 8-bit quantized bases (QLoRA through bitsandbytes),
bf16 LoRA with per-layer compilation, and FSDP2 on two GPUs against one.

They skip without CUDA (CI has none); the device machine runs them with
`python -m pytest tests/generative/test_gpu.py` (bench/results/generative_h200.md records the run).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from services.trainer.context import Progress
from services.trainer.recipes.generative.launch import run_generative_job
from services.trainer.recipes.generative.model import load_model
from tests.generative.conftest import (
    fresh_process_generate,
    job_context,
    llm_config,
    prompts,
    task_frame,
    worker_losses,
)
from tunewire.config import resolve

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="needs bitsandbytes")

LORA = {"type": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
GPU = {"trainer": {"use_gpu": True}}


@needs_bnb
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_base_holds_bitsandbytes_layers(tiny_model, bits):
    import bitsandbytes as bnb

    cfg = resolve(llm_config(tiny_model, adapter=LORA, quantization={"bits": bits}, backend=GPU))
    model = load_model(cfg, torch.device("cuda"), packed=True, total_steps=10)
    kind = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    quantized = [m for m in model.modules() if isinstance(m, kind)]
    assert len(quantized) == 2 * 7  # every linear of both decoder layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


@needs_bnb
@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_trains_and_its_adapter_loads_in_stock_peft(tiny_model, tmp_path, bits):
    raw = llm_config(tiny_model, adapter=LORA, quantization={"bits": bits}, backend=GPU,
                     trainer={"epochs": 20, "learning_rate": 0.02, "eval_steps": None})
    ctx, rec = job_context(tmp_path, raw, validation=task_frame().iloc[:0])
    run_generative_job(ctx)
    losses = [e.loss for e in rec.of(Progress)]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    assert (ctx.artifact_dir / "adapter_model.safetensors").exists()
    # The adapter loads on the unquantized base in a fresh interpreter and generates.
    out = fresh_process_generate(ctx.artifact_dir, prompts(task_frame().head(2)))
    assert len(out) == 2


def test_bf16_lora_with_compiled_layers_learns(tiny_model, tmp_path):
    raw = llm_config(tiny_model, adapter=LORA, backend=GPU,
                     trainer={"epochs": 20, "learning_rate": 0.02, "eval_steps": None, "compile": True})
    ctx, rec = job_context(tmp_path, raw, validation=task_frame().iloc[:0])
    run_generative_job(ctx)
    losses = [e.loss for e in rec.of(Progress)]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses


@pytest.fixture(scope="module")
def one_gpu(tiny_model, tmp_path_factory) -> list[float]:
    """The one-GPU reference, run once for every strategy it is compared with."""
    return worker_losses(tiny_model, tmp_path_factory.mktemp("one"), steps=4, use_gpu=True,
                         workers=1)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_match_one_at_the_same_global_batch(tiny_model, tmp_path, one_gpu, strategy):
    two = worker_losses(tiny_model, tmp_path, steps=4, use_gpu=True, workers=2, strategy=strategy)
    assert len(one_gpu) == 4 and two == pytest.approx(one_gpu, rel=2e-2)
