"""A Ludwig-saved llm config (`model_hyperparameters.json` as Ludwig 0.17 writes it, every default
filled in) loads through the CLI's reader and the trainer's parser, keeps Ludwig's meaning, and
trains; a Ludwig key at a value other than its default is honoured or refused naming it; and
`defaults:` applies to the features as in Ludwig."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.trainer.context import Progress
from services.trainer.model_types import resolve
from services.trainer.recipes.generative.launch import run_generative_job
from tests.generative.conftest import job_context, llm_config
from tunewire.config import ConfigError, load

ROOT = Path(__file__).resolve().parents[2]
SAVED = ROOT / "tests" / "fixtures" / "ludwig" / "llm_model_hyperparameters.json"


@pytest.fixture
def saved(tiny_model, tmp_path) -> Path:
    """The saved config beside a `tiny-llama` directory, as Ludwig's model folder would hold it."""
    (tmp_path / "tiny-llama").symlink_to(tiny_model)
    shutil.copy(SAVED, tmp_path / "model_hyperparameters.json")
    return tmp_path / "model_hyperparameters.json"


def test_a_ludwig_saved_llm_config_keeps_ludwigs_meaning_and_trains(saved, tmp_path):
    raw = load(saved)  # the CLI's reader: the relative base_model resolves beside the file
    cfg = resolve(raw)
    t = cfg.trainer
    assert (t.type, t.epochs, t.batch_size, t.learning_rate) == ("finetune", 2, 4, 0.003)
    assert t.gradient_accumulation_steps == 1 and t.effective_batch_size == 4  # auto, auto
    assert t.learning_rate_scheduler.decay == "cosine"
    assert t.learning_rate_scheduler.warmup_fraction == 0.05
    assert t.gradient_clipping["clipglobalnorm"] == 0.5
    assert (cfg.adapter.type, cfg.adapter.r, cfg.adapter.alpha) == ("lora", 8, 16)
    # Ludwig's input text defaults, as written: a missing value becomes "<UNK>".
    pre = cfg.input.preprocessing
    assert (pre.missing_value_strategy, pre.fill_value) == ("fill_with_const", "<UNK>")
    assert cfg.generation["max_new_tokens"] == 4 and cfg.generation["do_sample"] is False
    assert cfg.ludwig_version == "0.17.8"

    ctx, rec = job_context(tmp_path, raw)
    result = run_generative_job(ctx)
    losses = [p.loss for p in rec.of(Progress)]
    assert len(losses) == 6  # 12 rows, 4 a step, 2 epochs
    assert all(loss == loss for loss in losses)  # finite: a real step each time
    assert (ctx.artifact_dir / "adapter_config.json").exists()
    assert any(m.split == "validation" for m in result.metrics)


def test_the_cli_renders_a_ludwig_saved_config(saved):
    done = subprocess.run(
        [sys.executable, str(ROOT / "clients" / "cli.py"), "render_config", "-c", saved.name],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=saved.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rendered = yaml.safe_load(done.stdout)
    assert rendered["trainer"]["batch_size"] == 4
    assert Path(rendered["base_model"]) == (saved.parent / "tiny-llama").resolve()


@pytest.mark.parametrize(
    ("where", "value", "field"),
    [
        (("trainer", "model_soup"), "uniform", "trainer.model_soup"),
        (("trainer", "learning_rate_scheduler", "staircase"), True, None),
        (("adapter", "loraplus_lr_ratio"), 16.0, "adapter.loraplus_lr_ratio"),
        (("quantization",), {"bits": 4, "qat": True}, "quantization.qat"),
        (("input_features", 0, "encoder", "skip"), True, "input_features[0].encoder.skip"),
        (
            ("output_features", 0, "loss", "type"),
            "sequence_softmax_cross_entropy",
            "output_features[0].loss.type",
        ),
        (("trust_remote_code",), True, "trust_remote_code"),
    ],
)
def test_a_ludwig_key_off_its_default_is_refused_naming_it(saved, where, value, field):
    raw = load(saved)
    node = raw
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    field = field or ".".join(map(str, where))
    with pytest.raises(ConfigError) as info:
        resolve(raw)
    assert info.value.field == field
    if not isinstance(value, dict):
        assert "only its default" in str(info.value)


def test_derived_keys_change_nothing_whatever_they_say(saved):
    raw = load(saved)
    raw["input_features"][0]["proc_column"] = "name_other"
    raw["output_features"][0]["decoder"]["max_new_tokens"] = 99  # Ludwig copies generation's
    raw["input_features"][0]["preprocessing"]["tokenizer"] = "space_punct"  # Ludwig forces hf
    assert resolve(raw).generation["max_new_tokens"] == 4


def test_defaults_apply_to_the_features_of_their_type_as_in_ludwig(tiny_model):
    raw = llm_config(
        tiny_model,
        defaults={
            "text": {"preprocessing": {"lowercase": True, "max_sequence_length": 16}},
            # No feature of these types: never read, in Ludwig as here.
            "number": {"preprocessing": {"outlier_strategy": "clip"}},
        },
    )
    raw["input_features"][0]["preprocessing"] = {"max_sequence_length": 8}  # the feature wins
    cfg = resolve(raw)
    assert cfg.input.preprocessing.lowercase is True
    assert cfg.input.preprocessing.max_sequence_length == 8
    # Outputs take decoder and loss from defaults, not preprocessing (Ludwig's rule).
    assert cfg.output.preprocessing.lowercase is False
    assert cfg.defaults is None
    bad = llm_config(tiny_model, defaults={"text": {"preprocessing": {"ngram_size": 3}}})
    with pytest.raises(ConfigError) as info:
        resolve(bad)
    assert info.value.field == "input_features[0].preprocessing.ngram_size"


def test_a_resolved_config_resolves_to_itself(saved):
    from tunewire.config import to_dict

    once = to_dict(resolve(load(saved)))
    assert to_dict(resolve(json.loads(json.dumps(once)))) == once
