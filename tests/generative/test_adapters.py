"""Each PEFT adapter Ludwig lists trains a few steps through the recipe (in process, on the tiny
model), and the artifact it writes loads with stock peft and gives the trained model's logits;
`pretrained_adapter_weights` continues from such an artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.trainer.model_types import resolve
from services.trainer.recipes.generative.recipe import GenerativeRecipe
from tests.generative.conftest import llm_config, task_frame, worker_recipe

QV = ["q_proj", "v_proj"]
ADAPTERS = {
    "loha": {"target_modules": QV},
    "lokr": {"target_modules": QV},
    "vera": {"r": 16, "target_modules": QV},
    "fourierft": {"n_frequency": 64, "target_modules": QV},
    "oft": {"oft_block_size": 16, "target_modules": QV},
    "boft": {"boft_block_size": 4, "boft_dropout": 0.0, "target_modules": QV},
    "hra": {"r": 4, "target_modules": QV},
    "ln_tuning": {},
    "ia3": {},
    "lora": {"use_dora": True, "use_rslora": True, "target_modules": QV},
    "lora-pissa": {"init_lora_weights": "pissa", "target_modules": QV},
    "lora-olora": {"init_lora_weights": "olora", "target_modules": QV},
    # r × rho components must fit the distinct inputs at target positions (about 12 here).
    "lora-eva": {"r": 4, "init_lora_weights": "eva", "target_modules": QV},
    "lora-orthogonal": {"init_lora_weights": "orthogonal", "target_modules": QV},
    # Saved converted: a rank-2r plain LoRA of the original base.
    "lora-corda": {"init_lora_weights": "corda", "target_modules": QV},
}


# FourierFT scales its spectral update by 150 (Ludwig's default): a smaller step suits it.
LEARNING_RATE = {"fourierft": 0.0005}


def trained_recipe(
    base: Path, tmp: Path, adapter: dict | None, steps: int = 4, **trainer
) -> GenerativeRecipe:
    lr = LEARNING_RATE.get((adapter or {}).get("type"), 0.01)
    raw = llm_config(
        base,
        adapter=adapter,
        # The whole set each step, so the losses compare the same examples.
        trainer={
            "epochs": steps,
            "batch_size": 12,
            "learning_rate": lr,
            "eval_steps": None,
            **trainer,
        },
    )
    recipe = worker_recipe(raw, tmp, task_frame(), "cpu")
    recipe.setup()
    recipe.train()
    recipe.save_artifact()
    return recipe


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("what does alba like ? answer :", return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**ids).logits


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_adapter_trains_and_loads_with_stock_peft(tiny_model, tmp_path, kind):
    from peft import AutoPeftModelForCausalLM

    torch.manual_seed(0)
    recipe = trained_recipe(tiny_model, tmp_path, {"type": kind.split("-")[0], **ADAPTERS[kind]})
    losses = [loss for _, loss in recipe.losses]
    assert len(losses) == 4 and losses[-1] < losses[0]
    loaded = AutoPeftModelForCausalLM.from_pretrained(recipe.job.artifact_dir)
    assert (
        type(loaded.peft_config["default"]).__name__.lower().startswith(kind.replace("_", "")[:3])
    )
    expected = logits(recipe.lm, recipe.tokenizer)
    assert torch.allclose(logits(loaded, recipe.tokenizer), expected, atol=1e-4)


def test_pretrained_adapter_weights_continue_a_saved_adapter(tiny_model, tmp_path):
    first = trained_recipe(tiny_model, tmp_path / "a", {"type": "lora", "target_modules": QV})
    after_first = logits(first.lm, first.tokenizer)
    adapter = {"type": "lora", "pretrained_adapter_weights": str(first.job.artifact_dir)}
    second = trained_recipe(tiny_model, tmp_path / "b", adapter, steps=1)
    # Before its one step the second job's model was the first one's: its first loss is the
    # first job's last level, far below a fresh adapter's.
    fresh = trained_recipe(tiny_model, tmp_path / "c", {"type": "lora", "target_modules": QV}, 1)
    assert second.losses[0][1] < fresh.losses[0][1]
    assert not torch.allclose(logits(second.lm, second.tokenizer), after_first)


def test_layers_to_freeze_regex_keeps_matching_weights(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    recipe = trained_recipe(
        tiny_model, tmp_path, None, steps=2, layers_to_freeze_regex=r"layers\.0\."
    )
    trained = recipe.lm.state_dict()
    name = "model.layers.{}.self_attn.q_proj.weight"
    assert torch.equal(trained[name.format(0)], base[name.format(0)])
    assert not torch.equal(trained[name.format(1)], base[name.format(1)])


def test_bitsandbytes_optimizers_need_a_gpu(tiny_model, tmp_path):
    from services.trainer.recipes.generative.model import PreconditionError

    with pytest.raises(PreconditionError, match="paged_adamw.*CUDA GPU"):
        trained_recipe(tiny_model, tmp_path, None, steps=1, optimizer={"type": "paged_adamw"})


@pytest.mark.parametrize("kind", ["paged_adamw", "paged_adamw_8bit", "adamw_8bit"])
def test_amsgrad_with_a_bitsandbytes_optimizer_is_refused(tiny_model, kind):
    """bitsandbytes' 32-bit AdamW takes amsgrad and ignores it: refused rather than dropped."""
    from tunewire.config import ConfigError

    optimizer = {"type": kind, "amsgrad": True}
    with pytest.raises(ConfigError, match="no AMSGrad") as info:
        resolve(llm_config(tiny_model, trainer={"optimizer": optimizer}))
    assert info.value.field == "trainer.optimizer.amsgrad"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize(
    ("use_gpu", "error", "words"),
    [(False, "InvalidArgument", "use_gpu is false"), (True, "FailedPrecondition", "has none")],
)
def test_a_trainer_without_cuda_refuses_bitsandbytes_optimizers_at_admission(
    tiny_model, tmp_path, use_gpu, error, words
):
    import pandas as pd

    from services.trainer.admission import Admission, JobInputs
    from services.trainer.datasets import DatasetStore
    from tunewire import errors

    store = DatasetStore(tmp_path / "datasets")
    df = pd.DataFrame({"name": ["ann", "bob"] * 4, "answer": ["tea", "milk"] * 4})
    rec = store.put([df.to_csv(index=False).encode()], "d.csv")
    raw = llm_config(
        tiny_model,
        adapter={"type": "lora"},
        trainer={"optimizer": {"type": "paged_adamw_8bit"}},
        backend={"trainer": {"use_gpu": use_gpu}},
    )
    with pytest.raises(getattr(errors, error), match=f"paged_adamw_8bit.*{words}") as info:
        Admission(store).admit(raw, JobInputs(dataset_id=rec.id))
    assert info.value.field == "trainer.optimizer.type"


def set_up(base: Path, tmp: Path, adapter: dict, frame) -> GenerativeRecipe:
    recipe = worker_recipe(
        llm_config(base, adapter=adapter, trainer={"batch_size": 4}), tmp, frame, "cpu"
    )
    recipe.setup()
    return recipe


def test_eva_initialises_lora_from_the_training_datas_activations(tiny_model, tmp_path):
    """EVA's A holds the top right-singular vectors of each layer's inputs over the job's
    training rows (orthonormal rows, B zero), so other data gives another A."""
    eva = {"type": "lora", "r": 4, "init_lora_weights": "eva", "target_modules": QV}
    df = task_frame()
    first = set_up(tiny_model, tmp_path / "a", eva, df)
    layer = first.lm.base_model.model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert torch.allclose(a @ a.T, torch.eye(a.shape[0]), atol=1e-4)
    assert not b.any()
    other = df.assign(answer=df["answer"].iloc[::-1].to_numpy())  # other targets, same words
    second = set_up(tiny_model, tmp_path / "b", eva, other)
    layer2 = second.lm.base_model.model.model.layers[0].self_attn.q_proj
    assert not torch.allclose(layer2.lora_A["default"].weight, a, atol=1e-3)
    assert first.cfg.adapter.eva_config.rho == 2.0  # Ludwig's and PEFT's default


def test_eva_with_too_little_data_is_refused_before_training(tiny_model, tmp_path):
    from services.trainer.recipes.generative.model import PreconditionError

    eva = {"type": "lora", "r": 64, "init_lora_weights": "eva", "target_modules": QV}
    with pytest.raises(PreconditionError, match="eva needs at least 128 target tokens"):
        set_up(tiny_model, tmp_path, eva, task_frame().head(4))


@pytest.mark.parametrize(
    ("adapter", "field", "words"),
    [
        ({"init_lora_weights": "loftq"}, "adapter.loftq_config", "must be set"),
        ({"init_lora_weights": "corda", "use_dora": True}, "adapter.use_dora", "DoRA"),
        ({"init_lora_weights": "orthogonal", "r": 5}, "adapter.init_lora_weights", "even"),
        ({"eva_config": {"rho": 2.0}}, "adapter.eva_config", "init_lora_weights: eva"),
        ({"init_lora_weights": "eva", "eva_config": {"rho": 0.5}}, "adapter.eva_config.rho", ">="),
        ({"type": "adalora", "init_lora_weights": "pissa"}, "adapter.init_lora_weights", "AdaLoRA"),
        ({"loftq_config": {"loftq_bits": 4}}, "adapter.loftq_config", "init_lora_weights: loftq"),
    ],
)
def test_initialisations_not_built_are_refused_naming_the_key(tiny_model, adapter, field, words):
    from tunewire.config import ConfigError

    raw = llm_config(tiny_model, adapter={"type": "lora", **adapter})
    with pytest.raises(ConfigError, match=words) as info:
        resolve(raw)
    assert info.value.field == field


def test_corda_on_a_quantized_base_is_refused(tiny_model):
    from tunewire.config import ConfigError

    corda = {"type": "lora", "init_lora_weights": "corda"}
    with pytest.raises(ConfigError, match="quantized") as info:
        resolve(llm_config(tiny_model, adapter=corda, quantization={"bits": 4}))
    assert info.value.field == "adapter.init_lora_weights"


def test_corda_cuts_the_base_by_its_data_driven_adapter_and_saves_a_plain_lora(
    tiny_model, tmp_path
):
    """CorDA rewrites the adapted base weights (W_res = W - B0 A0, from the training data's
    covariance); the artifact is the trained adapter against the original base, a rank-2r
    plain LoRA (PEFT's conversion), which the parametrized test shows gives the trained logits."""
    import json

    from transformers import AutoModelForCausalLM

    corda = {"type": "lora", "init_lora_weights": "corda", "target_modules": QV}
    recipe = trained_recipe(tiny_model, tmp_path, corda, steps=1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    name = "model.layers.0.self_attn.q_proj"
    live = recipe.lm.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(live, base[f"{name}.weight"])  # the residual
    a0 = recipe.corda_initial[f"base_model.model.{name}.lora_A.default.weight"]
    b0 = recipe.corda_initial[f"base_model.model.{name}.lora_B.default.weight"]
    scaling = recipe.cfg.adapter.alpha / recipe.cfg.adapter.r
    assert torch.allclose(live + scaling * b0 @ a0, base[f"{name}.weight"], atol=1e-4)
    saved = json.loads((recipe.job.artifact_dir / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"], saved["init_lora_weights"]) == (16, 32, True)
