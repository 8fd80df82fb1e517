"""Each PEFT adapter Ludwig lists trains a few steps through the recipe (in process, on the tiny
model), and the artifact it writes loads with stock peft and gives the trained model's logits;
`pretrained_adapter_weights` continues from such an artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.trainer.model_types import resolve
from services.trainer.recipes.generative.events import EventWriter
from services.trainer.recipes.generative.recipe import GenerativeRecipe, WorkerJob
from tests.generative.conftest import llm_config, task_frame
from tunewire.config import to_dict

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
    cfg = resolve(raw)
    (tmp / "inputs").mkdir(parents=True)
    task_frame().to_parquet(tmp / "inputs" / "train.parquet", index=False)
    job = WorkerJob("j", tmp, tmp / "artifact", 1, cfg, to_dict(cfg))
    recipe = GenerativeRecipe(job, EventWriter(tmp / "events.jsonl", False), torch.device("cpu"))
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
