"""The fused LoRA linear against PEFT's own forward and backward: same outputs, same gradients,
same loss curve through the recipe, PEFT's path wherever fusing would not be exact."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from services.trainer.model_types import resolve
from services.trainer.recipes.generative import lora_fused
from services.trainer.recipes.generative.events import EventWriter
from services.trainer.recipes.generative.lora_fused import FusedLoraLinear, fuse_lora
from services.trainer.recipes.generative.recipe import GenerativeRecipe, WorkerJob
from tests.generative.conftest import llm_config, task_frame
from tunewire.config import to_dict

LAYERS = 2
LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


def peft_lm(dtype: torch.dtype = torch.float32, **lora_kwargs) -> torch.nn.Module:
    """A tiny Llama with biases (so the bias path runs) and LoRA on every linear, B non-zero."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        mlp_bias=True,
    )
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, **lora_kwargs
    )
    return get_peft_model(LlamaForCausalLM(cfg), lora).to(dtype)


def forward_backward(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits, the input-embedding gradient and every trainable gradient of one step."""
    model.zero_grad(set_to_none=True)
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    torch.manual_seed(1)  # the same dropout masks in both models
    logits = model(inputs_embeds=embeds).logits
    (logits.float() ** 2).mean().backward()
    out = {"logits": logits.detach(), "x": embeds.grad}
    out.update({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    return out


def assert_same(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor], rel: float) -> None:
    assert ref.keys() == got.keys()
    for name, r in ref.items():
        g, r = got[name].float(), r.float()
        assert (g - r).abs().max() <= rel * r.abs().max(), name


def fused_copy(model: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    fused = copy.deepcopy(model)
    return fused, fuse_lora(fused)


@pytest.mark.parametrize(
    "lora_kwargs",
    [{}, {"lora_dropout": 0.1}, {"use_rslora": True}, {"use_dora": True}, {"lora_bias": True}],
    ids=["plain", "dropout", "rslora", "dora", "lora_bias"],
)
def test_matches_peft_forward_and_gradients(lora_kwargs):
    ref = peft_lm(**lora_kwargs)
    fused, count = fused_copy(ref)
    assert count == LAYERS * LINEARS_PER_LAYER
    ids = torch.randint(0, 64, (2, 12))
    assert_same(forward_backward(ref, ids), forward_backward(fused, ids), rel=1e-5)


def test_fused_function_runs_only_in_the_plain_case():
    model, _ = fused_copy(peft_lm())
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q, FusedLoraLinear)
    x = torch.randn(3, 32, requires_grad=True)

    def fused_ran() -> bool:
        view = q(x).grad_fn  # the output is a view of the function's 2-D result
        fns = [view, *(f for f, _ in view.next_functions if f is not None)]
        return any("LoraLinearFn" in f.name() for f in fns)

    assert fused_ran()
    with model.disable_adapter():
        assert not fused_ran()
    q.base_layer.weight.requires_grad_(True)  # a trainable base: PEFT's path computes its gradient
    assert not fused_ran()
    q.base_layer.weight.requires_grad_(False)
    assert fused_ran()
    q.merge()
    assert not fused_ran()


def test_eval_mode_and_merged_adapter_match_peft():
    ref = peft_lm(lora_dropout=0.1).eval()
    fused, _ = fused_copy(ref)
    ids = torch.randint(0, 64, (2, 12))
    assert_same(forward_backward(ref, ids), forward_backward(fused, ids), rel=1e-5)
    ref.merge_adapter()
    fused.merge_adapter()
    with torch.no_grad():
        assert torch.equal(ref(input_ids=ids).logits, fused(input_ids=ids).logits)


def test_bf16_is_as_close_to_fp32_as_peft():
    ref = peft_lm(torch.bfloat16)
    fused, _ = fused_copy(ref)
    exact_model = copy.deepcopy(ref).float()
    errors = {"peft": [], "ours": []}
    # Both round differently (ours fewer times), and in a random 2-layer model one draw can
    # amplify either's rounding several-fold: compare the mean error over several inputs.
    for seed in range(6):
        torch.manual_seed(seed)
        ids = torch.randint(0, 64, (2, 12))
        exact = forward_backward(exact_model, ids)
        for name, model in (("peft", ref), ("ours", fused)):
            got = forward_backward(model, ids)
            errors[name] += [
                float((got[k].float() - e).norm() / e.norm()) for k, e in exact.items()
            ]
    peft, ours = (sum(v) / len(v) for v in (errors["peft"], errors["ours"]))
    assert ours <= 1.25 * peft, (ours, peft)


def test_state_dict_and_saved_adapter_are_unchanged(tmp_path):
    ref = peft_lm()
    fused, _ = fused_copy(ref)
    assert list(ref.state_dict()) == list(fused.state_dict())
    ref.save_pretrained(tmp_path / "ref")
    fused.save_pretrained(tmp_path / "fused")
    a = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    b = load_file(tmp_path / "fused" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def first_layer_step(model) -> tuple[torch.nn.Module, Callable]:
    """`model`'s first decoder layer, and `step(fn)`: `fn` (the layer, or a compiled copy of
    it) run forward and backward on one fixed input and seed; its output and every gradient."""
    core = model.base_model.model.model
    layer = core.layers[0]
    x = torch.randn(2, 12, 32, requires_grad=True)
    pos = core.rotary_emb(x, torch.arange(12)[None])

    def step(fn) -> dict[str, torch.Tensor]:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        torch.manual_seed(1)
        y = fn(x, position_embeddings=pos)
        (y**2).sum().backward()
        grads = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
        return {"y": y.detach(), "x": x.grad, **grads}

    return layer, step


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train-dropout"])
def test_compiled_decoder_layer_matches_eager(train):
    # Other tests of the session compiled the same decoder-layer code: past dynamo's recompile
    # limit it would run eagerly, which fullgraph refuses. Start from a fresh budget.
    torch._dynamo.reset()
    model, _ = fused_copy(peft_lm(lora_dropout=0.1).train(train))
    layer, step = first_layer_step(model)
    eager = step(layer)
    # fullgraph: the autograd.Function must trace without graph breaks. Inductor draws other
    # dropout masks than eager, so with dropout on the comparison runs AOT autograd without it
    # and inductor only has to compile.
    backend = "aot_eager" if train else "inductor"
    assert_same(eager, step(torch.compile(layer, fullgraph=True, backend=backend)), rel=1e-5)
    if train:
        step(torch.compile(layer, fullgraph=True))


def recipe_losses(tiny_model: Path, tmp: Path, *, fused: bool, steps: int = 6) -> list[float]:
    """Loss per step of our recipe (packed batches, dropout on) with or without the fusion."""
    raw = llm_config(
        tiny_model,
        adapter={
            "type": "lora",
            "r": 8,
            "alpha": 16,
            "dropout": 0.1,
            "target_modules": "all-linear",
        },
        trainer={"epochs": 1, "train_steps": steps, "learning_rate": 0.02, "eval_steps": None},
    )
    cfg = resolve(raw)
    (tmp / "inputs").mkdir(parents=True)
    task_frame().to_parquet(tmp / "inputs" / "train.parquet", index=False)
    job = WorkerJob(
        job_id="j",
        job_dir=tmp,
        artifact_dir=tmp / "artifact",
        attempt=1,
        cfg=cfg,
        config_dict=to_dict(cfg),
    )
    recipe = GenerativeRecipe(job, EventWriter(tmp / "events.jsonl", False), torch.device("cpu"))
    unfused = mock.patch.object(lora_fused, "fuse_lora", lambda model, *a, **k: 0)
    with contextlib.nullcontext() if fused else unfused:
        recipe.setup()
    n_fused = sum(isinstance(m, FusedLoraLinear) for m in recipe.lm.modules())
    assert n_fused == (LAYERS * LINEARS_PER_LAYER if fused else 0)
    micro = recipe.plan.epoch(0)
    assert micro[0].position_ids is not None  # packed
    return [recipe._train_step([micro[i % len(micro)]]).read()[0] for i in range(steps)]


def test_recipe_loss_curve_is_the_same_with_and_without_fusion(tiny_model, tmp_path):
    plain = recipe_losses(tiny_model, tmp_path / "plain", fused=False)
    fused = recipe_losses(tiny_model, tmp_path / "fused", fused=True)
    assert plain[-1] < plain[0]  # the run trains, so later steps test the gradients
    assert fused == pytest.approx(plain, rel=1e-5)
