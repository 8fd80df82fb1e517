"""The generative recipe on a CUDA GPU: 4- and 8-bit quantized bases (QLoRA through bitsandbytes),
LoftQ's start on the 4-bit base, bitsandbytes' paged and 8-bit optimizers, bf16 LoRA with
per-layer compilation, dense causal attention against varlen, FSDP2 on two GPUs against one, and
FP8 training (torchao) with stock artifacts.

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
from services.trainer.recipes.generative.recipe import GenerativeRecipe
from tests.generative.conftest import (
    fresh_process_generate,
    job_context,
    llm_config,
    prompts,
    task_frame,
    worker_losses,
    worker_recipe,
)
from tunewire.devices import compute_dtype

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"
)

needs_fp8 = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None
    or not torch.cuda.is_available()
    or torch.cuda.get_device_capability() < (8, 9),
    reason="needs torchao and a GPU of compute capability 8.9+",
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
def test_qlora_adapter_trains_in_the_jobs_dtype(tiny_model, bits):
    """Not in bitsandbytes' compute dtype (Ludwig's default float16): fp16 Adam state
    underflowed and the 4-bit job's loss went NaN at its fourth step on the H200."""
    cfg = resolve(llm_config(tiny_model, adapter=LORA, quantization={"bits": bits}, backend=GPU))
    model = load_model(cfg, torch.device("cuda"), packed=True, total_steps=10)
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    assert dtypes == {compute_dtype(torch.device("cuda"))}


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


def bnb_recipe(tiny_model, tmp_path, optimizer: str, *, epochs: int, adapter=LORA):
    """A QLoRA recipe set up in process on the GPU (the whole set each step)."""
    raw = llm_config(
        tiny_model,
        adapter=adapter,
        backend=GPU,
        trainer={
            "epochs": epochs,
            "batch_size": 12,
            "learning_rate": 0.02,
            "eval_steps": None,
            "optimizer": {"type": optimizer},
        },
    )
    if adapter is LORA:
        raw["quantization"] = {"bits": 4}
    recipe = worker_recipe(raw, tmp_path, task_frame(), "cuda")
    recipe.setup()
    return recipe


@needs_bnb
@pytest.mark.parametrize("optimizer", ["paged_adamw", "paged_adamw_8bit", "adamw_8bit"])
def test_bitsandbytes_optimizers_train_a_quantized_base(tiny_model, tmp_path, optimizer):
    """Ludwig's paged and 8-bit AdamW build as bitsandbytes' own classes and train QLoRA."""
    import bitsandbytes.optim as bnb_optim

    from services.trainer.recipes.generative.optimizers import BITSANDBYTES

    recipe = bnb_recipe(tiny_model, tmp_path, optimizer, epochs=20)
    assert type(recipe.optimizer) is getattr(bnb_optim, BITSANDBYTES[optimizer])
    recipe.train()
    losses = [loss for _, loss in recipe.losses]
    assert len(losses) == 20 and sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    state = [s for s in recipe.optimizer.state.values() if s]
    assert state, "the optimizer kept no state"


@needs_bnb
@pytest.mark.parametrize("optimizer", ["paged_adamw", "paged_adamw_8bit", "adamw_8bit"])
def test_bitsandbytes_optimizer_state_survives_a_checkpoint(tiny_model, tmp_path, optimizer):
    """A resumed job restores the bitsandbytes optimizer through torch's distributed
    state-dict API (what checkpoint.py uses): its state comes back as saved, dtype included."""
    from services.trainer.recipes.generative import checkpoint

    recipe = bnb_recipe(tiny_model, tmp_path, optimizer, epochs=3)
    recipe.train()
    saved = checkpoint.save(tmp_path / "ckpt", 3, recipe.model, recipe.optimizer, {}, 0)
    fresh = type(recipe.optimizer)(
        [p for p in recipe.model.parameters() if p.requires_grad], lr=0.02
    )
    # As a resumed recipe builds it: its scheduler sets initial_lr, which the checkpoint holds.
    torch.optim.lr_scheduler.LambdaLR(fresh, lambda step: 1.0)
    checkpoint.load(saved, recipe.model, fresh, 0)
    before = {id(p): s for p, s in recipe.optimizer.state.items()}
    restored = list(fresh.state.items())
    assert restored and len(restored) == len(before)
    for p, s in restored:
        for key in ("state1", "state2"):
            assert s[key].dtype == before[id(p)][key].dtype
            assert torch.equal(s[key].cpu(), before[id(p)][key].cpu())


@needs_bnb
@pytest.mark.parametrize("optimizer", ["paged_adamw", "paged_adamw_8bit", "adamw_8bit"])
def test_bitsandbytes_optimizers_page_and_quantize_large_weights(optimizer):
    """LoRA's weights of a tiny model are below bitsandbytes' thresholds (8-bit state from 4096
    elements, paged buffers from 100000): a large weight takes the paged and 8-bit paths."""
    from types import SimpleNamespace

    from services.trainer.recipes.generative.optimizers import bitsandbytes_optimizer

    torch.manual_seed(0)
    target = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    weight = torch.nn.Parameter(torch.zeros_like(target))
    o = SimpleNamespace(type=optimizer, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0)
    opt = bitsandbytes_optimizer(o, [weight], 0.05, torch.device("cuda"))
    losses = []
    for _ in range(20):
        loss = (weight.float() - target.float()).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    state1 = opt.state[weight]["state1"]
    assert state1.dtype == (torch.uint8 if "8bit" in optimizer else torch.float32)
    assert getattr(state1, "is_paged", False) == optimizer.startswith("paged")


LOFTQ = {**LORA, "init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4, "loftq_iter": 1}}


@needs_bnb
def test_loftq_starts_the_4bit_base_near_the_original_weights(tiny_model):
    """Each adapted 4-bit layer starts at Q(W) + alpha/r * B A, the rank-r correction of its
    quantization error (r=16 of at most 64 dimensions: a good part of it), in the job's dtype."""
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit
    from safetensors.torch import load_file

    original = load_file(str(tiny_model / "model.safetensors"))
    cfg = resolve(llm_config(tiny_model, adapter=LOFTQ, backend=GPU, trainer={"compile": False}))
    model = load_model(cfg, torch.device("cuda"), packed=True, total_steps=10)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    assert len(layers) == 2 * 7
    dtype = compute_dtype(torch.device("cuda"))  # the job's dtype, whatever bnb computes in
    before = after = 0.0
    for name, layer in layers.items():
        w = original[name.removeprefix("base_model.model.") + ".weight"].cuda().float()
        q = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert a.dtype == b.dtype == dtype and b.abs().sum() > 0
        start = q + layer.scaling["default"] * (b.float() @ a.float())
        before += float((w - q).norm() ** 2)
        after += float((w - start).norm() ** 2)
    assert after < 0.7 * before, (after, before)


@needs_bnb
def test_loftq_trains_and_its_adapter_loads_in_stock_peft_on_its_4bit_base(tiny_model, tmp_path):
    """Ludwig's example shape (no quantization block): the job trains on the 4-bit base, and the
    artifact, loaded with stock transformers/peft on that base as resolved_config.json records
    it (and by tunewire's predict), gives the trained model's logits."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from services.trainer.recipes.generative.predict import load_artifact

    recipe = bnb_recipe(tiny_model, tmp_path, "adamw", epochs=20, adapter=LOFTQ)
    recipe.train()
    losses = [loss for _, loss in recipe.losses]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    recipe.save_artifact()
    artifact = recipe.job.artifact_dir
    q = json.loads((artifact / "resolved_config.json").read_text())["quantization"]
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model,
        dtype=torch.bfloat16,
        device_map={"": 0},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q["bnb_4bit_quant_type"],
            bnb_4bit_use_double_quant=q["bnb_4bit_use_double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, q["bnb_4bit_compute_dtype"]),
        ),
    )
    stock = PeftModel.from_pretrained(base, artifact)
    ours, _ = load_artifact(artifact, torch.device("cuda"))
    ids = recipe.tokenizer("what does alba like ? answer :", return_tensors="pt").to("cuda")
    with torch.no_grad():
        trained = recipe.lm.eval()(**ids).logits.float()
        for loaded in (stock, ours):
            got = loaded.eval()(**ids).logits.float()
            assert (got - trained).abs().max() < 0.05 * trained.abs().max()


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


def graphs_recipe(base, tmp, adapter, mode: str, **trainer) -> GenerativeRecipe:
    """A recipe over the tiny task with compiled blocks in `mode`, set up on the GPU."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    raw = llm_config(
        base,
        adapter=adapter,
        backend=GPU,
        trainer={"compile": True, "compile_mode": mode, "should_shuffle": False, **trainer},
    )
    recipe = worker_recipe(raw, tmp, task_frame(), "cuda")
    recipe.setup()
    return recipe


@pytest.mark.parametrize(
    "precision, accumulation",
    [("auto", 2), pytest.param("fp8", 1, marks=needs_fp8)],
    ids=["bf16-accum2", "fp8"],
)
def test_a_cuda_graphs_lora_job_trains_and_saves_a_stock_adapter(
    tiny_model, tmp_path, precision, accumulation
):
    """A whole job with trainer.compile_mode: reduce-overhead: it trains (loss falls), its
    evaluations and sample generations run between graph replays (blocks eager there), and its
    adapter files load in stock peft in a fresh interpreter."""
    from safetensors.torch import load_file

    torch._dynamo.reset()
    raw = llm_config(
        tiny_model,
        adapter=LORA,
        backend=GPU,
        trainer={
            "epochs": 20,
            "learning_rate": 0.01 if precision == "fp8" else 0.02,
            "eval_steps": None,
            "compile": True,
            "compile_mode": "reduce-overhead",
            "gradient_accumulation_steps": accumulation,
            "precision": precision,
        },
    )
    ctx, rec = job_context(tmp_path, raw, validation=task_frame().iloc[:4])
    run_generative_job(ctx)
    assert ctx.config_dict["trainer"]["compile_mode"] == "reduce-overhead"
    losses = [e.loss for e in rec.of(Progress)]
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses
    saved = load_file(ctx.artifact_dir / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    assert len(fresh_process_generate(ctx.artifact_dir, prompts(task_frame().head(2)))) == 2


@pytest.mark.parametrize("adapter", [LORA, None], ids=["lora", "full"])
def test_blocks_replayed_as_cuda_graphs_train_as_compiled_blocks(tiny_model, tmp_path, adapter):
    """trainer.compile_mode: reduce-overhead (each block's forward and backward replayed as a
    CUDA graph) with two micro-batches a step: the same losses over three optimizer steps as
    compiled blocks launched kernel by kernel. A gradient left in a graph's memory would be
    overwritten by the second micro-batch (graphs.keep_gradient_buffers)."""

    def losses(mode: str) -> list[float]:
        recipe = graphs_recipe(
            tiny_model,
            tmp_path / mode,
            adapter,
            mode,
            batch_size=2,
            gradient_accumulation_steps=2,
            learning_rate=0.01,
        )
        micro = recipe.plan.epoch(0)[:2]  # the same two micro-batches each step
        assert recipe.graphs == (mode == "reduce-overhead")
        return [recipe._train_step(micro).read()[0] for _ in range(3)]

    plain, graphs = losses("default"), losses("reduce-overhead")
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


def fused_float8_layer(device: str, emulate: bool) -> torch.nn.Module:
    """One fused LoRA layer (bias on, B non-zero) over a bf16 linear, its base GEMMs float8."""
    from peft import LoraConfig, get_peft_model

    from services.trainer.recipes.generative.lora_fused import float8_layers, fuse_lora

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(256, 512, bias=True))
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules=["0"], init_lora_weights=False)
    model = get_peft_model(base, cfg).to(device, torch.bfloat16)
    assert fuse_lora(model, True, emulate=emulate) == 1
    return float8_layers(model)[0]


@needs_fp8
def test_fp8_fused_lora_gemms_match_their_emulation():
    """The fused LoRA operator's real float8 GEMMs (`torch._scaled_mm`: layouts, dequantizing
    scales, bias, fast accumulation forward only, e5m2 by e4m3 backward) against its float32
    emulation of the same casts: one layer, so float8's rounding does not compound."""

    def run(emulate: bool) -> dict[str, torch.Tensor]:
        layer = fused_float8_layer("cuda", emulate)
        torch.manual_seed(1)
        x = torch.randn(1000, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        y = layer(x)
        y.backward(torch.randn_like(y))
        grads = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
        return {"y": y.detach(), "x": x.grad, **grads}

    emulated, real = run(True), run(False)
    for name, e in emulated.items():
        error = float((real[name].float() - e.float()).norm() / e.float().norm())
        assert error < 1e-2, (name, error)


@needs_fp8
@pytest.mark.parametrize(
    "adapter, compile",
    [(None, True), (LORA, True), (LORA, False)],
    ids=["full", "lora", "lora-eager"],
)
def test_fp8_compiled_training_learns_and_saves_a_stock_artifact(
    tiny_model, tmp_path, adapter, compile
):
    """trainer.precision: fp8 with per-layer compile (and LoRA eagerly too): every decoder
    linear runs float8 GEMMs (torchao's Float8Linear for full fine-tuning, the fused LoRA
    operator for an adapter's frozen base), the loss falls, and the artifact holds plain tensors
    under the usual names, loaded by stock transformers/peft in a fresh interpreter."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from services.trainer.context import Log

    torch._dynamo.reset()
    raw = llm_config(
        tiny_model,
        adapter=adapter,
        backend=GPU,
        trainer={
            "epochs": 20,
            "learning_rate": 0.01 if adapter else 0.003,
            "eval_steps": None,
            "compile": compile,
            "precision": "fp8",
        },
    )
    ctx, rec = job_context(tmp_path, raw, validation=task_frame().iloc[:0])
    run_generative_job(ctx)
    said = [e.message for e in rec.of(Log) if "float8 GEMMs" in e.message]
    assert said and "14 linear layers" in said[0], said  # 7 per decoder layer, head excluded
    how = "in the fused LoRA operator" if adapter else "as torchao's Float8Linear"
    assert f"14 {how}" in said[0], said
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
