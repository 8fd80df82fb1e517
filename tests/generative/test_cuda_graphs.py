"""trainer.compile_mode: reduce-overhead (the compiled blocks replayed as CUDA graphs) on the CPU
side: the key is recorded in the resolved config, refused where it cannot work (naming the key),
and a job whose batches change shape, or whose worker has no GPU, is refused before its model
loads. The GPU side (a real job trains and saves a stock adapter) is in test_gpu.py."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from services.trainer.model_types import resolve
from services.trainer.recipes.generative import graphs
from services.trainer.recipes.generative.data import Sample, collate_packed, collate_padded
from services.trainer.recipes.generative.errors import PreconditionError
from services.trainer.recipes.generative.recipe import GenerativeRecipe
from tests.generative.conftest import llm_config, task_frame, worker_recipe
from tunewire.config import ConfigError, to_dict

LORA = {"type": "lora", "r": 4, "target_modules": "all-linear"}
GRAPHS = {"compile": True, "compile_mode": "reduce-overhead"}
GPU = {"trainer": {"use_gpu": True}}


def test_the_mode_is_recorded_in_the_resolved_config(tiny_model):
    plain = to_dict(resolve(llm_config(tiny_model, backend=GPU)))
    assert plain["trainer"]["compile_mode"] == "default"
    cfg = resolve(llm_config(tiny_model, adapter=LORA, backend=GPU, trainer=GRAPHS))
    assert to_dict(cfg)["trainer"]["compile_mode"] == "reduce-overhead"


@pytest.mark.parametrize(
    "overrides, says",
    [
        ({"trainer": {"compile_mode": "reduce-overhead"}}, "set it to true"),
        ({"trainer": GRAPHS, "backend": {"trainer": {"use_gpu": False}}}, "CUDA GPU"),
        ({"trainer": GRAPHS, "backend": {"trainer": {"num_workers": 2}}}, "one worker"),
        ({"trainer": GRAPHS, "adapter": LORA, "quantization": {"bits": 4}}, "quantized base"),
        ({"trainer": GRAPHS, "adapter": {"type": "ia3"}}, "not 'ia3'"),
        (
            {"trainer": {**GRAPHS, "enable_gradient_checkpointing": True}},
            "enable_gradient_checkpointing",
        ),
        ({"trainer": {"compile": True, "compile_mode": "max-autotune"}}, "reduce-overhead"),
    ],
    ids=["no-compile", "cpu", "two-workers", "quantized", "ia3", "checkpointing", "other-mode"],
)
def test_refused_where_cuda_graphs_cannot_work(tiny_model, overrides, says):
    raw = llm_config(tiny_model, backend=GPU)
    for key, value in overrides.items():
        if key == "backend":
            raw["backend"] = value
        elif isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    with pytest.raises(ConfigError, match=says) as info:
        resolve(raw)
    assert info.value.field == "trainer.compile_mode"


def test_an_ecd_trainer_refuses_the_key():
    ecd = {
        "input_features": [{"name": "x", "type": "number"}],
        "output_features": [{"name": "y", "type": "binary"}],
        "trainer": {"compile_mode": "reduce-overhead"},
    }
    with pytest.raises(ConfigError) as info:
        resolve(ecd)
    assert info.value.field == "trainer.compile_mode"


def sample(n: int) -> Sample:
    return Sample(list(range(1, n + 1)), [-100] + list(range(2, n + 1)))


def test_one_layout_but_the_last_batch_passes_and_varying_layouts_are_refused():
    cuda = torch.device("cuda")
    whole = [collate_packed([[sample(16)]] * 4, 16, 0) for _ in range(3)]
    short = collate_packed([[sample(16)]] * 2, 16, 0)
    graphs.check_one_shape([*whole, short], cuda)  # a short remainder records one more graph
    # Packed rows of mixed lengths: as many segments as samples (and tails) in each batch.
    packed = [
        collate_packed([[sample(8), sample(8)], [sample(16)]], 16, 0),
        collate_packed([[sample(4), sample(6), sample(6)], [sample(16)]], 16, 0),
        collate_packed([[sample(16)]], 16, 0),
    ]
    with pytest.raises(PreconditionError, match="trainer.compile_mode.*layouts"):
        graphs.check_one_shape(packed, cuda)
    padded = [collate_padded([sample(5), sample(9)], 0), collate_padded([sample(7)] * 2, 0), short]
    with pytest.raises(PreconditionError, match="2×9, 2×7|2×7, 2×9"):
        graphs.check_one_shape(padded, cuda)
    with pytest.raises(PreconditionError, match="no CUDA GPU"):
        graphs.check_one_shape(whole, torch.device("cpu"))


def recipe(base, tmp, train: pd.DataFrame) -> GenerativeRecipe:
    trainer = {**GRAPHS, "should_shuffle": False}
    return worker_recipe(
        llm_config(base, adapter=LORA, backend=GPU, trainer=trainer), tmp, train, "cpu"
    )


def test_a_job_is_refused_before_its_model_loads(tiny_model, tmp_path, monkeypatch):
    import services.trainer.recipes.generative.recipe as recipe_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(recipe_module, "load_model", no_model)
    # The task's samples are all one length: only the worker's missing GPU is refused.
    with pytest.raises(PreconditionError, match="no CUDA GPU"):
        recipe(tiny_model, tmp_path / "a", task_frame()).setup()
    # One longer answer: the first batch's rows hold one whole sample and three shorter ones
    # with padded tails, the second's four shorter ones: two layouts.
    mixed = task_frame()
    mixed.loc[0, "answer"] = "red apple and green fig"
    with pytest.raises(PreconditionError, match="2 layouts"):
        recipe(tiny_model, tmp_path / "b", mixed).setup()
