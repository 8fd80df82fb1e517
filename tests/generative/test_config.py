"""The llm config: Ludwig's keys, every default written, errors with key paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.trainer.model_types import resolve
from tests.generative.test_adapters import ADAPTERS
from tunewire.config import ConfigError, schema, to_dict
from tunewire.config.llm import (
    DEFAULT_TASK_TEMPLATE,
    LlmConfig,
    LlmOutputFeature,
    LoraAdapter,
    PromptConfig,
    load_resolved_llm,
    parse_llm,
)
from tunewire.config.trainer import TrainerConfig

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
            "trainer": {"type": "finetune", "batch_size": 2, "effective_batch_size": 8},
        }
    )
    d = to_dict(cfg)
    assert d["trainer"]["type"] == "finetune"
    assert d["trainer"]["gradient_accumulation_steps"] == 4
    # Ludwig's finetune trainer: its ecd trainer with batch_size 1 and eval_batch_size 2.
    t = d["trainer"]
    assert t["learning_rate"] == 0.001 and t["optimizer"]["type"] == "adam"
    assert t["epochs"] == 100 and t["early_stop"] == 5 and t["eval_batch_size"] == 2
    assert t["gradient_clipping"] == {"clipglobalnorm": 0.5, "clipnorm": None, "clipvalue": None}
    assert d["adapter"]["r"] == 8 and d["adapter"]["alpha"] == 16  # null: 2 × r
    assert d["adapter"]["init_lora_weights"] == "default"
    assert d["generation"] == {
        "max_new_tokens": None,  # Ludwig's rule: half the base model's context, known at load
        "do_sample": True,
        "temperature": 0.1,
        "top_k": 50,
        "top_p": 1.0,
        "num_beams": 1,
    }
    assert d["prompt"]["retrieval"] == {
        "type": None,
        "index_name": None,
        "model_name": None,
        "k": 0,
    }
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
    cfg = resolve(
        {
            **BASE,
            "prompt": {"task": "Summarise"},
            "generation": {"max_new_tokens": 5},
            "trainer": {"type": "finetune"},
        }
    )
    assert cfg.adapter is None and cfg.trainer.learning_rate == 0.001
    assert cfg.prompt.template == DEFAULT_TASK_TEMPLATE
    assert cfg.generation["max_new_tokens"] == 5


def test_adapter_kinds_and_merge():
    ft = {"type": "finetune"}
    cfg = resolve(
        {
            **BASE,
            "trainer": ft,
            "adapter": {
                "type": "lora",
                "r": 4,
                "target_modules": ["q_proj"],
                "postprocessor": {"merge_adapter_into_base_model": True},
            },
        }
    )
    assert isinstance(cfg.adapter, LoraAdapter) and cfg.merge_adapter
    for kind in ("adalora", "ia3"):
        assert resolve({**BASE, "trainer": ft, "adapter": {"type": kind}}).adapter.type == kind


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"tuner": {"type": "lora"}}, "tuner"),
        ({"adapter": {"type": "lora", "rank": 4}}, "adapter.rank"),
        ({"adapter": {"type": "prefix"}}, "adapter.type"),
        ({"trainer": {"optimzer": {}}}, "trainer.optimzer"),
        ({"trainer": {"type": "trainer"}}, "trainer.type"),
        (
            {"trainer": {"type": "finetune", "batch_size": 3, "effective_batch_size": 8}},
            "trainer.effective_batch_size",
        ),
        ({"generation": {"max_new_tokenz": 3}}, "generation.max_new_tokenz"),
        ({"quantization": {"bits": 3}}, "quantization.bits"),
        ({"quantization": {"bits": 4}}, "quantization"),
        ({"backend": {"type": "ray"}}, "backend.type"),
        ({"backend": {"trainer": {"strategy": "deepspeed"}}}, "backend.trainer.strategy"),
        ({"prompt": {"template": "{a-b}"}}, "prompt.template"),
        ({"prompt": {"template": "say {instruction}", "task": "t"}}, "prompt.template"),
        ({"prompt": {"template": "no placeholder"}}, "prompt.template"),
        ({"prompt": {"retrieval": {"k": 2}}}, "prompt.retrieval.k"),
        ({"output_features": [{"name": "o", "type": "binary"}]}, "output_features[0].type"),
        (
            {"output_features": [{"name": "o", "type": "category"}]},
            "output_features[0].decoder.type",
        ),
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
            {"trainer": {"type": "finetune", "learning_rate_scheduler": {"warmup_evaluations": 2}}},
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


def test_ludwig_defaults_where_the_user_said_nothing():
    cfg = resolve(
        {
            **BASE,
            "adapter": {"type": "lora", "r": 4},
            "quantization": {"bits": 4},
            "output_features": [
                {"name": "output", "type": "text", "preprocessing": {"max_sequence_length": 20}}
            ],
            "trainer": {"type": "finetune", "gradient_clipping": {"clipvalue": 1.0}},
        }
    )
    assert cfg.adapter.alpha == 8
    assert cfg.quantization.bnb_4bit_compute_dtype == "float16"
    assert cfg.generation["max_new_tokens"] == 32  # Ludwig: at least its 32
    assert cfg.trainer.gradient_clipping == {
        "clipglobalnorm": 0.5,
        "clipnorm": None,
        "clipvalue": 1.0,
    }
    assert (
        resolve(
            {**BASE, "trainer": {"type": "finetune", "gradient_clipping": None}}
        ).trainer.gradient_clipping
        is None
    )
    assert resolve({**BASE, "prompt": {"task": "t"}}).prompt.template.endswith("ASSISTANT:\n")


def test_generation_blocks_transformers_only_warns_about_are_accepted():
    # Ludwig's examples set temperature with do_sample false; transformers ignores and warns.
    cfg = resolve({**BASE, "generation": {"temperature": 0.5, "do_sample": False}})
    assert cfg.generation["temperature"] == 0.5
    assert any("temperature" in w for w in cfg.warnings)
    assert resolve(BASE).warnings == []
    with pytest.raises(ConfigError) as info:
        resolve({**BASE, "generation": {"max_new_tokens": -1}})
    assert info.value.field == "generation"


def test_no_trainer_section_is_ludwigs_zero_shot_trainer():
    cfg = resolve(BASE)
    assert cfg.trainer.type == "none"
    assert to_dict(parse_llm(to_dict(cfg))) == to_dict(cfg)
    # What Ludwig's inference-only trainer writes loads; a training key of one's own is refused.
    saved = {"type": "none", "epochs": 3, "learning_rate": 0.0002, "packing": False}
    assert resolve({**BASE, "trainer": saved}).trainer.type == "none"
    for patch, field in [
        ({"trainer": {"epochs": 2}}, "trainer.epochs"),
        ({"adapter": {"type": "lora"}}, "adapter"),
    ]:
        with pytest.raises(ConfigError) as info:
            resolve({**BASE, **patch})
        assert info.value.field == field and "finetune" in str(info.value)


def test_liger_kernels_are_an_llm_trainer_option():
    cfg = resolve({**BASE, "trainer": {"type": "finetune", "use_liger_kernel": True}})
    assert to_dict(cfg)["trainer"]["use_liger_kernel"] is True
    ecd = {
        "input_features": [{"name": "x", "type": "number"}],
        "output_features": [{"name": "y", "type": "binary"}],
        "trainer": {"use_liger_kernel": True},
    }
    with pytest.raises(ConfigError) as info:
        resolve(ecd)
    assert info.value.field == "trainer.use_liger_kernel"
    with pytest.raises(ConfigError, match="eager") as info:
        resolve(
            {**BASE, "trainer": {"type": "finetune", "use_liger_kernel": True, "compile": True}}
        )
    assert info.value.field == "trainer.use_liger_kernel"


# Every adapter the recipe trains (tests/generative/test_adapters.py), adalora, none, and the
# other sections a resolved config carries as dataclasses.
RESOLVED_CASES = {
    **{f"adapter-{k}": {"adapter": {"type": k.split("-")[0], **v}} for k, v in ADAPTERS.items()},
    "adapter-adalora": {"adapter": {"type": "adalora", "init_r": 6, "target_r": 2}},
    "full-finetune": {},
    "zero-shot": {"trainer": {"type": "none"}},
    "few-shot": {"prompt": {"task": "t", "retrieval": {"type": "random", "k": 2}}},
    "quantized-category": {
        "adapter": {"type": "lora", "postprocessor": {"merge_adapter_into_base_model": True}},
        "quantization": {"bits": 4},
        "output_features": [
            {
                "name": "output",
                "type": "category",
                "decoder": {
                    "type": "category_extractor",
                    "match": {"yes": {"type": "contains", "value": "yes"}},
                },
            }
        ],
    },
}


@pytest.mark.parametrize("case", list(RESOLVED_CASES))
def test_a_resolved_config_loads_back_as_it_was(case):
    extra = RESOLVED_CASES[case]
    raw = {**BASE, "trainer": {"type": "finetune"}, **extra}
    cfg = resolve(raw)
    loaded = load_resolved_llm(json.loads(json.dumps(to_dict(cfg))))
    assert loaded == cfg
    assert type(loaded.adapter) is type(cfg.adapter)
    assert to_dict(loaded) == to_dict(cfg)


def test_the_worker_loads_the_resolved_config_without_validating_it(tmp_path, monkeypatch):
    """Admission validated the config; the worker rebuilds it. A resolved config that today's
    validator would refuse (here: every section's checks raise) still loads as written."""
    from services.trainer.recipes.generative import worker

    cfg = resolve({**BASE, "adapter": {"type": "lora"}, "trainer": {"type": "finetune"}})
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "config.json").write_text(json.dumps(to_dict(cfg)))
    (tmp_path / "inputs" / "job.json").write_text(
        json.dumps({"job_id": "j", "artifact_dir": str(tmp_path / "a"), "attempt": 2})
    )

    def refuse(*_args, **_kwargs):
        raise AssertionError("validated again")

    for section in (LlmConfig, LoraAdapter, TrainerConfig, PromptConfig, LlmOutputFeature):
        monkeypatch.setattr(section, "__post_init__", refuse)
    monkeypatch.setattr(schema, "parse", refuse)
    job = worker.load_job(tmp_path)
    assert job.cfg == cfg and job.attempt == 2 and job.config_dict == to_dict(cfg)
    assert "parse_llm" not in Path(worker.__file__).read_text()


def test_a_dict_that_to_dict_did_not_write_is_refused():
    d = to_dict(resolve({**BASE, "trainer": {"type": "finetune"}}))
    del d["trainer"]["epochs"]
    with pytest.raises(TypeError, match="missing \\['epochs'\\]"):
        load_resolved_llm(d)
    with pytest.raises(TypeError, match="unknown \\['epochz'\\]"):
        load_resolved_llm({**to_dict(resolve({**BASE})), "epochz": 1})


def test_adalora_honours_bias_type_and_refuses_what_peft_ignores():
    """AdaLoRA takes LoRA's keys: bias_type reaches PEFT; use_rslora and r, which PEFT's AdaLoRA
    does not read, are refused by name rather than ignored."""
    from services.trainer.recipes.generative.adapters import peft_config

    adalora = {"type": "adalora", "bias_type": "lora_only"}
    cfg = resolve({**BASE, "adapter": adalora, "trainer": {"type": "finetune"}})
    assert peft_config(cfg.adapter, total_steps=100).bias == "lora_only"
    with pytest.raises(ConfigError) as err:
        resolve(
            {**BASE, "adapter": {**adalora, "use_rslora": True}, "trainer": {"type": "finetune"}}
        )
    assert err.value.field == "adapter.use_rslora"
    with pytest.raises(ConfigError) as err:
        resolve({**BASE, "adapter": {**adalora, "r": 16}, "trainer": {"type": "finetune"}})
    assert err.value.field == "adapter.r" and "init_r" in str(err.value)
