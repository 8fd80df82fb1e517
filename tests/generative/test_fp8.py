"""`trainer.precision: fp8` on a CPU: the resolved config, every refusal naming the key, and
torchao's module swap (with its CPU emulation of the float8 GEMMs) keeping the parameters, their
names and PEFT's LoRA layout as a stock model has them. Training in float8 on a GPU is
tests/generative/test_gpu.py's."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from services.trainer.model_types import resolve
from services.trainer.recipes.generative.launch import run_generative_job
from tests.generative.conftest import job_context, llm_config
from tunewire.config import to_dict
from tunewire.config.schema import ConfigError
from tunewire.errors import FailedPrecondition

LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
GPU = {"trainer": {"use_gpu": True}}
needs_torchao = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None, reason="needs torchao (the gpu extra)"
)


def fp8_config(tiny_model, **overrides) -> dict:
    return llm_config(tiny_model, backend=GPU, **{"trainer": {"precision": "fp8"}, **overrides})


@pytest.mark.parametrize("adapter", [None, LORA])
def test_fp8_resolves_for_full_and_lora(tiny_model, adapter):
    cfg = resolve(fp8_config(tiny_model, adapter=adapter))
    assert to_dict(cfg)["trainer"]["precision"] == "fp8"
    assert resolve(llm_config(tiny_model)).trainer.precision == "auto"


@pytest.mark.parametrize(
    "patch, says",
    [
        ({"quantization": {"bits": 4}, "adapter": LORA}, "quantized base"),
        ({"backend": {"trainer": {"use_gpu": False}}}, "use_gpu is false"),
        ({"adapter": {"type": "ia3"}}, "not 'ia3'"),
        ({"trainer": {"type": "none", "precision": "fp8"}}, "no effect"),
    ],
)
def test_fp8_refusals_name_the_key(tiny_model, patch, says):
    raw = fp8_config(tiny_model)
    for key, value in patch.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    if raw["trainer"].get("type") == "none":
        raw["trainer"] = {"type": "none", "precision": "fp8"}
    with pytest.raises(ConfigError, match=says) as info:
        resolve(raw)
    assert info.value.field == "trainer.precision"


def test_fp8_is_refused_for_ecd():
    ecd = {
        "input_features": [{"name": "x", "type": "number"}],
        "output_features": [{"name": "y", "type": "binary"}],
        "trainer": {"precision": "fp8"},
    }
    with pytest.raises(ConfigError, match="model_type: llm") as info:
        resolve(ecd)
    assert info.value.field == "trainer.precision"


def test_an_unknown_precision_is_refused(tiny_model):
    with pytest.raises(ConfigError) as info:
        resolve(llm_config(tiny_model, trainer={"precision": "fp16"}))
    assert info.value.field == "trainer.precision"


def test_admission_refuses_fp8_without_torchao(tiny_model, monkeypatch):
    from services.trainer import model_types

    cfg = resolve(fp8_config(tiny_model))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        model_types.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torchao" else real(name, *a),
    )
    with pytest.raises(FailedPrecondition, match="torchao") as info:
        model_types.model_type("llm").admit(cfg, checks=None)
    assert info.value.field == "trainer.precision"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_fp8_job_without_a_gpu_is_a_failed_precondition(tiny_model, tmp_path):
    ctx, _ = job_context(tmp_path, fp8_config(tiny_model))
    # Without torchao (the gpu extra) the first thing missing is the package.
    with pytest.raises(
        FailedPrecondition, match=r"trainer\.precision: fp8 needs (a CUDA GPU|the torchao)"
    ):
        run_generative_job(ctx)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_a_trainer_without_cuda_refuses_fp8_at_admission(tiny_model, tmp_path):
    """The trainer's machine is its workers': a job they could not run is refused up front."""
    import pandas as pd

    from services.trainer.admission import Admission, JobInputs
    from services.trainer.datasets import DatasetStore

    store = DatasetStore(tmp_path / "datasets")
    df = pd.DataFrame({"name": ["ann", "bob"] * 4, "answer": ["tea", "milk"] * 4})
    rec = store.put([df.to_csv(index=False).encode()], "d.csv")
    with pytest.raises(FailedPrecondition, match="fp8 needs (a CUDA GPU|the torchao)") as info:
        Admission(store).admit(fp8_config(tiny_model), JobInputs(dataset_id=rec.id))
    assert info.value.field == "trainer.precision"


def _emulated(model: nn.Module) -> int:
    from services.trainer.recipes.generative import fp8

    return fp8.convert_linears(model, fp8.float8_config(fp8.RECIPE, emulate=True))


@needs_torchao
def test_full_model_swap_keeps_names_and_plain_tensors(tiny_model):
    from torchao.float8.float8_linear import Float8Linear
    from transformers import AutoModelForCausalLM

    from services.trainer.recipes.generative import fp8

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _emulated(model) == 2 * 7  # every linear of both decoder layers
    assert type(model.lm_head) is nn.Linear  # the head stays: the fused loss reads its weight
    assert type(model.model.layers[0].mlp.down_proj) is Float8Linear
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(type(v) is torch.Tensor and torch.equal(v, before[k]) for k, v in after.items())
    ids = torch.tensor([[4, 5, 6, 7, 8, 9, 10]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert fp8.describe(model).startswith("trainer.precision: fp8: 14 linear layers")


@needs_torchao
def test_lora_over_float8_bases_trains_only_the_adapter(tiny_model):
    """LoRA over torchao's float8 bases (what a LoRA layer the fused operator does not take
    runs, PEFT's forward): fuse_lora leaves them alone, the trainable names are those of LoRA
    over a plain base. The fused operator's own float8 path: tests/generative/test_lora_fp8.py."""
    from torchao.float8.float8_linear import Float8Linear
    from transformers import AutoModelForCausalLM

    from services.trainer.recipes.generative import adapters
    from services.trainer.recipes.generative.lora_fused import fuse_lora

    cfg = resolve(fp8_config(tiny_model, adapter=LORA))

    def lora(convert: bool) -> nn.Module:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        if convert:
            _emulated(model)
        return adapters.apply(model, cfg.adapter, 10)

    plain, converted = lora(False), lora(True)
    assert fuse_lora(converted) == 0
    bases = [m.base_layer for n, m in converted.named_modules() if n.endswith("q_proj")]
    assert bases and all(type(b) is Float8Linear for b in bases)
    names = {n for n, p in converted.named_parameters() if p.requires_grad}
    assert names == {n for n, p in plain.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    opt = torch.optim.AdamW([p for p in converted.parameters() if p.requires_grad], lr=0.01)
    ids = torch.tensor([[4, 5, 6, 7, 8, 9, 10, 11]])
    for _ in range(3):
        converted(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    moved = [p for n, p in converted.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in moved)
