"""The llm config: Ludwig's keys, every default written, errors with key paths."""

from __future__ import annotations

import pytest

from tunewire.config import ConfigError, resolve, to_dict
from tunewire.config.llm import DEFAULT_TASK_TEMPLATE, LoraAdapter, parse_llm

BASE = {
    "model_type": "llm",
    "base_model": "some/model",
    "input_features": [{"name": "instruction", "type": "text"}],
    "output_features": [{"name": "output", "type": "text"}],
}


def test_defaults_are_written_and_round_trip():
    cfg = resolve(
        {
            **BASE,
            "adapter": {"type": "lora"},
            "trainer": {"batch_size": 2, "effective_batch_size": 8},
        }
    )
    d = to_dict(cfg)
    assert d["trainer"]["type"] == "finetune"
    assert d["trainer"]["gradient_accumulation_steps"] == 4
    assert d["trainer"]["learning_rate"] == 2e-4 and d["trainer"]["optimizer"]["type"] == "adamw"
    assert d["adapter"]["r"] == 8 and d["adapter"]["alpha"] == 16
    assert d["generation"] == {"max_new_tokens": 64, "do_sample": False, "num_beams": 1}
    assert d["backend"] == {
        "type": "local",
        "trainer": {
            "strategy": "ddp",
            "num_workers": 1,
            "nnodes": 1,
            "use_gpu": True,
            "reshard_after_forward": True,
        },
    }
    assert to_dict(parse_llm(d)) == d  # what a job records parses back to the same config


def test_full_finetuning_and_task_prompt():
    cfg = resolve({**BASE, "prompt": {"task": "Summarise"}, "generation": {"max_new_tokens": 5}})
    assert cfg.adapter is None and cfg.trainer.learning_rate == 2e-5
    assert cfg.prompt.template == DEFAULT_TASK_TEMPLATE
    assert cfg.generation["max_new_tokens"] == 5


def test_adapter_kinds_and_merge():
    cfg = resolve(
        {
            **BASE,
            "adapter": {
                "type": "lora",
                "r": 4,
                "target_modules": ["q_proj"],
                "postprocessor": {"merge_adapter_into_base_model": True},
            },
        }
    )
    assert isinstance(cfg.adapter, LoraAdapter) and cfg.merge_adapter
    assert resolve({**BASE, "adapter": {"type": "adalora"}}).adapter.type == "adalora"
    assert resolve({**BASE, "adapter": {"type": "ia3"}}).adapter.type == "ia3"


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"tuner": {"type": "lora"}}, "tuner"),
        ({"adapter": {"type": "lora", "rank": 4}}, "adapter.rank"),
        ({"adapter": {"type": "prefix"}}, "adapter.type"),
        ({"trainer": {"optimzer": {}}}, "trainer.optimzer"),
        ({"trainer": {"type": "trainer"}}, "trainer.type"),
        ({"trainer": {"batch_size": 3, "effective_batch_size": 8}}, "trainer.effective_batch_size"),
        ({"generation": {"max_new_tokenz": 3}}, "generation.max_new_tokenz"),
        ({"quantization": {"bits": 3}}, "quantization.bits"),
        ({"quantization": {"bits": 4}}, "quantization"),
        ({"backend": {"type": "ray"}}, "backend.type"),
        ({"backend": {"trainer": {"strategy": "deepspeed"}}}, "backend.trainer.strategy"),
        ({"prompt": {"template": "{a-b}"}}, "prompt.template"),
        ({"output_features": [{"name": "o", "type": "category"}]}, "output_features[0].type"),
        (
            {"input_features": [{"name": "a", "type": "text"}, {"name": "b", "type": "text"}]},
            "input_features",
        ),
        (
            {"preprocessing": {"global_max_sequence_length": 1}},
            "preprocessing.global_max_sequence_length",
        ),
        ({"colour": 1}, "colour"),
        (
            {"trainer": {"learning_rate_scheduler": {"warmup_evaluations": 2}}},
            "trainer.learning_rate_scheduler.warmup_evaluations",
        ),
    ],
)
def test_errors_carry_key_paths(patch, field):
    with pytest.raises(ConfigError) as info:
        resolve({**BASE, **patch})
    assert info.value.field == field


def test_tuner_message_names_adapter():
    with pytest.raises(ConfigError, match="adapter"):
        resolve({**BASE, "tuner": {"type": "lora"}})


def test_base_model_is_required():
    raw = dict(BASE)
    del raw["base_model"]
    with pytest.raises(ConfigError) as info:
        resolve(raw)
    assert info.value.field == "base_model"


def test_a_union_mismatch_lists_what_is_allowed():
    with pytest.raises(ConfigError) as info:
        resolve({**BASE, "trainer": {"eval_batch_size": "big"}})
    assert info.value.field == "trainer.eval_batch_size"
    assert "expected an integer, 'auto' or null" in str(info.value)


def test_a_ludwig_trainer_we_do_not_build_is_named():
    with pytest.raises(ConfigError) as info:
        resolve({**BASE, "trainer": {"type": "dpo", "dpo_beta": 0.1}})
    assert info.value.field == "trainer.type"
    assert "'dpo'" in str(info.value) and "preference" in str(info.value)
