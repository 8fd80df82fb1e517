"""The generative recipe on a CUDA GPU: 4- and 8-bit quantized bases (QLoRA through bitsandbytes),
bitsandbytes' paged and 8-bit optimizers, bf16 LoRA with per-layer compilation, dense causal
attention against varlen, FSDP2 on two GPUs against one, and FP8 training (torchao) with stock
artifacts.

They skip without CUDA (CI has none); the device machine runs them with
`python -m pytest tests/generative/test_gpu.py` (bench/results/generative_train_h200.md records
the run).
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from services.trainer.context import Progress
from services.trainer.model_types import resolve
from services.trainer.recipes.generative.data import build_samples, collate_packed
from services.trainer.recipes.generative.launch import run_generative_job
from services.trainer.recipes.generative.model import CausalLMWithLoss, load_model, load_tokenizer
from tests.generative.conftest import (
    fresh_process_generate,
    job_context,
    llm_config,
    prompts,
    task_frame,
    worker_losses,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"
)

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
    raw = llm_config(
        tiny_model,
        adapter=LORA,
        quantization={"bits": bits},
        backend=GPU,
        trainer={"epochs": 20, "learning_rate": 0.02, "eval_steps": None},
    )
    ctx, rec = job_context(tmp_path, raw, validation=task_frame().iloc[:0])
    run_generative_job(ctx)
    losses = [e.loss for e in rec.of(Progress)]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    assert (ctx.artifact_dir / "adapter_model.safetensors").exists()
    # The adapter loads on the unquantized base in a fresh interpreter and generates.
    out = fresh_process_generate(ctx.artifact_dir, prompts(task_frame().head(2)))
    assert len(out) == 2


@needs_bnb
@pytest.mark.parametrize("optimizer", ["paged_adamw", "paged_adamw_8bit", "adamw_8bit"])
def test_bitsandbytes_optimizers_train_a_quantized_base(tiny_model, tmp_path, optimizer):
    """Ludwig's paged and 8-bit AdamW build as bitsandbytes' own classes and train QLoRA."""
    import bitsandbytes.optim as bnb_optim

    from services.trainer.recipes.generative.events import EventWriter
    from services.trainer.recipes.generative.optimizers import BITSANDBYTES
    from services.trainer.recipes.generative.recipe import GenerativeRecipe, WorkerJob
    from tunewire.config import to_dict

    cfg = resolve(
        llm_config(
            tiny_model,
            adapter=LORA,
            quantization={"bits": 4},
            backend=GPU,
            trainer={
                "epochs": 20,
                "batch_size": 12,
                "learning_rate": 0.02,
                "eval_steps": None,
                "optimizer": {"type": optimizer},
            },
        )
    )
    (tmp_path / "inputs").mkdir()
    task_frame().to_parquet(tmp_path / "inputs" / "train.parquet", index=False)
    job = WorkerJob("j", tmp_path, tmp_path / "artifact", 1, cfg, to_dict(cfg))
    recipe = GenerativeRecipe(
        job, EventWriter(tmp_path / "events.jsonl", False), torch.device("cuda")
    )
    recipe.setup()
    assert type(recipe.optimizer) is getattr(bnb_optim, BITSANDBYTES[optimizer])
    recipe.train()
    losses = [loss for _, loss in recipe.losses]
    assert len(losses) == 20 and sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    state = [s for s in recipe.optimizer.state.values() if s]
    assert state, "the optimizer kept no state"


def test_bf16_lora_with_compiled_layers_learns(tiny_model, tmp_path):
    raw = llm_config(
        tiny_model,
        adapter=LORA,
        backend=GPU,
        trainer={"epochs": 20, "learning_rate": 0.02, "eval_steps": None, "compile": True},
    )
    ctx, rec = job_context(tmp_path, raw, validation=task_frame().iloc[:0])
    run_generative_job(ctx)
    losses = [e.loss for e in rec.of(Progress)]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses


@pytest.mark.parametrize("compile", [False, True])
def test_dense_rows_match_varlen_attention(tiny_model, compile):
    """Rows that are each one whole sample run SDPA's causal kernels (cuDNN first); the loss and
    the LoRA gradients must match the varlen path on the same batch."""
    torch._dynamo.reset()
    device = torch.device("cuda")
    cfg = resolve(llm_config(tiny_model, adapter=LORA, backend=GPU, trainer={"compile": compile}))
    torch.manual_seed(0)
    lm = load_model(cfg, device, packed=True, total_steps=10)
    for name, p in lm.named_parameters():
        if "lora_B" in name:  # non-zero, so that lora_A gets a gradient too
            torch.nn.init.normal_(p, std=0.05)
    model = CausalLMWithLoss(lm).train()
    tok = load_tokenizer(str(tiny_model))
    samples = build_samples(cfg, task_frame(), tok, 512)
    width = len(samples[0].input_ids)
    rows = [[s] for s in samples if len(s.input_ids) == width][:8]
    dense = collate_packed(rows, width, tok.pad_token_id).to(device)
    assert dense.dense

    def loss_and_grads(batch):
        stats = model(batch)
        (stats.loss_sum / batch.n_target).backward()
        grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
        model.zero_grad(set_to_none=True)
        return float(stats.loss_sum), grads

    loss_d, grads_d = loss_and_grads(dense)
    loss_v, grads_v = loss_and_grads(dataclasses.replace(dense, dense=False))
    assert loss_d == pytest.approx(loss_v, rel=1e-2)
    for name, g in grads_v.items():
        assert float(g.norm()) > 0, name
        assert float((grads_d[name] - g).norm() / g.norm()) < 0.03, name


@pytest.mark.parametrize("adapter", [LORA, None], ids=["lora", "full"])
def test_blocks_replayed_as_cuda_graphs_train_as_compiled_blocks(tiny_model, adapter, monkeypatch):
    """Blocks compiled with mode "reduce-overhead" (each block's forward and backward replayed
    as a CUDA graph, bench/generative_train.py's "+graphs" rows): the same losses over three
    optimizer steps as compiled blocks launched kernel by kernel."""
    from services.trainer.recipes.generative import model as model_module

    device = torch.device("cuda")
    cfg = resolve(llm_config(tiny_model, adapter=adapter, backend=GPU, trainer={"compile": True}))
    tok = load_tokenizer(str(tiny_model))
    samples = build_samples(cfg, task_frame(), tok, 512)
    width = len(samples[0].input_ids)
    rows = [[s] for s in samples if len(s.input_ids) == width][:8]
    batch = collate_packed(rows, width, tok.pad_token_id).to(device)

    def losses(mode: str | None) -> list[float]:
        torch._dynamo.reset()
        monkeypatch.setattr(model_module, "COMPILE_MODE", mode)
        torch.manual_seed(0)
        model = CausalLMWithLoss(load_model(cfg, device, packed=True, total_steps=10)).train()
        trained = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trained, lr=1e-3)
        out = []
        for _ in range(3):
            stats = model(batch)
            loss = stats.loss_sum / batch.n_target
            loss.backward()
            out.append(float(loss))
            opt.step()
            opt.zero_grad(set_to_none=True)
        return out

    plain, graphs = losses(None), losses("reduce-overhead")
    assert plain[-1] < plain[0], plain
    assert graphs == pytest.approx(plain, rel=1e-3), (graphs, plain)


@pytest.fixture(scope="module")
def one_gpu(tiny_model, tmp_path_factory) -> list[float]:
    """The one-GPU reference, run once for every strategy it is compared with."""
    return worker_losses(
        tiny_model, tmp_path_factory.mktemp("one"), steps=4, use_gpu=True, workers=1
    )


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_match_one_at_the_same_global_batch(tiny_model, tmp_path, one_gpu, strategy):
    two = worker_losses(tiny_model, tmp_path, steps=4, use_gpu=True, workers=2, strategy=strategy)
    assert len(one_gpu) == 4 and two == pytest.approx(one_gpu, rel=2e-2)


needs_fp8 = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None
    or not torch.cuda.is_available()
    or torch.cuda.get_device_capability() < (8, 9),
    reason="needs torchao and a GPU of compute capability 8.9+",
)


@needs_fp8
@pytest.mark.parametrize("adapter", [None, LORA], ids=["full", "lora"])
def test_fp8_compiled_training_learns_and_saves_a_stock_artifact(tiny_model, tmp_path, adapter):
    """trainer.precision: fp8 with per-layer compile: every decoder linear (an adapter's frozen
    base) runs float8 GEMMs, the loss falls, and the artifact holds plain tensors under the
    usual names, loaded by stock transformers/peft in a fresh interpreter."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from services.trainer.context import Log

    raw = llm_config(
        tiny_model,
        adapter=adapter,
        backend=GPU,
        trainer={
            "epochs": 20,
            "learning_rate": 0.02 if adapter else 0.003,
            "eval_steps": None,
            "compile": True,
            "precision": "fp8",
        },
    )
    ctx, rec = job_context(tmp_path, raw, validation=task_frame().iloc[:0])
    run_generative_job(ctx)
    said = [e.message for e in rec.of(Log) if "float8 GEMMs" in e.message]
    assert said and "14 linear layers" in said[0], said  # 7 per decoder layer, head excluded
    losses = [e.loss for e in rec.of(Progress)]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    art = ctx.artifact_dir
    if adapter is None:
        saved = load_file(art / "model.safetensors")
        stock = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
        assert set(saved) <= set(stock) and all(type(v) is torch.Tensor for v in saved.values())
        moved = saved["model.layers.0.mlp.down_proj.weight"].float()
        assert not torch.equal(moved, stock["model.layers.0.mlp.down_proj.weight"].float())
    else:
        saved = load_file(art / "adapter_model.safetensors")
        assert saved and all("lora_" in k for k in saved)
    assert len(fresh_process_generate(art, prompts(task_frame().head(2)))) == 2
