"""The config schema: Ludwig's vocabulary, unknown keys refused with their path, every default
written back, and the same checks over every config section (PEFT's test_config shape)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from services.trainer.model_types import resolve
from tunewire.config import ConfigError, ecd, load, to_dict, trainer
from tunewire.config.schema import from_dict

BASE = {
    "input_features": [
        {
            "name": "text",
            "type": "text",
            "encoder": {
                "type": "auto_transformer",
                "pretrained_model_name_or_path": "/models/minilm",
            },
        }
    ],
    "output_features": [{"name": "label", "type": "binary"}],
}


def with_(**changes):
    cfg = json.loads(json.dumps(BASE))
    for path, value in changes.items():
        node = cfg
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node.setdefault(k, {})
        node[keys[-1]] = value
    return cfg


def test_defaults_are_written_and_round_trip():
    resolved = to_dict(resolve(BASE))
    assert resolved["model_type"] == "ecd"
    assert resolved["trainer"]["batch_size"] == 128
    assert resolved["trainer"]["validation_field"] == "label"
    assert resolved["input_features"][0]["encoder"]["reduce_output"] == "mean"
    assert resolved["output_features"][0]["loss"]["type"] == "binary_weighted_cross_entropy"
    # The resolved config is itself a valid config that resolves to the same thing.
    assert to_dict(resolve(resolved)) == resolved


def test_a_resolved_config_of_every_input_type_loads_back_as_it_was():
    """`from_dict` rebuilds each input's encoder and preprocessing as the class its type picks."""
    raw = with_(
        input_features=[
            *BASE["input_features"],
            {"name": "n", "type": "number"},
            {"name": "b", "type": "binary"},
            {"name": "c", "type": "category"},
        ],
        output_features=[{"name": "label", "type": "binary"}, {"name": "k", "type": "category"}],
    )
    cfg = resolve(raw)
    loaded = from_dict(type(cfg), json.loads(json.dumps(to_dict(cfg))))
    assert loaded == cfg
    assert [type(f.encoder) for f in loaded.input_features] == [
        type(f.encoder) for f in cfg.input_features
    ]


@pytest.mark.parametrize(
    "config, field",
    [
        (with_(trainer={"optimzer": {"type": "adam"}}), "trainer.optimzer"),
        (with_(input_features__0__encoder__pooling="mean"), "input_features[0].encoder.pooling"),
        (with_(output_features__0__type="image"), "output_features[0].type"),
        (with_(input_features__0__type="audio"), "input_features[0].type"),
        (with_(trainer={"epochs": "ten"}), "trainer.epochs"),
        (with_(trainer={"epochs": 0}), "trainer.epochs"),
        (with_(trainer={"learning_rate": -1}), "trainer.learning_rate"),
        (
            with_(preprocessing={"split": {"probabilities": [0.5, 0.5]}}),
            "preprocessing.split.probabilities",
        ),
        (with_(preprocessing={"split": {"type": "stratify"}}), "preprocessing.split.column"),
        (with_(output_features__0__loss={"type": "huber"}), "output_features[0].loss.type"),
        (
            with_(output_features__0__decoder={"fc_dropout": 1.5}),
            "output_features[0].decoder.fc_dropout",
        ),
        (
            with_(input_features__0__encoder__reduce_output="attention"),
            "input_features[0].encoder.reduce_output",
        ),
        (with_(model_type="gbm"), "model_type"),
        ({"output_features": BASE["output_features"]}, "input_features"),
        (with_(trainer={"validation_field": "nope"}), "trainer.validation_field"),
    ],
)
def test_bad_configs_name_the_key(config, field):
    with pytest.raises(ConfigError) as info:
        resolve(config)
    assert info.value.field == field, str(info.value)
    assert info.value.code.name == "INVALID_ARGUMENT"


def test_cache_with_trainable_encoder_is_refused_clearly():
    cfg = with_(input_features__0__encoder__trainable=True)
    with pytest.raises(ConfigError) as info:
        resolve(cfg)
    assert "trainable" in info.value.field


def test_ludwig_older_fc_spelling_moves_to_the_decoder():
    cfg = with_(output_features__0__num_fc_layers=2, output_features__0__fc_output_size=32)
    out = resolve(cfg).output_features[0]
    assert (out.decoder.num_fc_layers, out.decoder.fc_output_size) == (2, 32)


SECTIONS = [
    trainer.OptimizerConfig,
    trainer.LearningRateSchedulerConfig,
    trainer.TrainerConfig,
    ecd.TextPreprocessing,
    ecd.DecoderConfig,
    ecd.LossConfig,
    ecd.SplitConfig,
    ecd.GlobalPreprocessing,
    ecd.CombinerConfig,
]


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_every_section_has_defaults_and_refuses_unknown_keys(cls):
    from tunewire.config.schema import parse

    obj = parse(cls, {}, "section")
    assert dataclasses.is_dataclass(obj)
    with pytest.raises(ConfigError) as info:
        parse(cls, {"no_such_key": 1}, "section")
    assert info.value.field == "section.no_such_key"


def test_load_yaml_and_relative_model_paths(tmp_path):
    (tmp_path / "models" / "enc").mkdir(parents=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "input_features:\n  - name: t\n    type: text\n    encoder:\n"
        "      pretrained_model_name_or_path: models/enc\n"
        "output_features:\n  - name: y\n    type: binary\n"
    )
    raw = load(cfg)
    assert raw["input_features"][0]["encoder"]["pretrained_model_name_or_path"] == str(
        (tmp_path / "models" / "enc").resolve()
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("input_features: [\n")
    with pytest.raises(ConfigError):
        load(bad)
    with pytest.raises(ConfigError):
        load(tmp_path / "missing.yaml")


def test_backend_is_one_definition_and_a_predictive_model_refuses_workers():
    """ecd and llm share Ludwig's `backend`; only llm runs torchrun workers, so a predictive
    config that asks for them is refused, not ignored."""
    assert resolve({**BASE, "backend": {"type": "local"}}).backend.type == "local"
    with pytest.raises(ConfigError) as info:
        resolve({**BASE, "backend": {"trainer": {"num_workers": 2}}})
    assert info.value.field == "backend.trainer"
    with pytest.raises(ConfigError) as info:
        resolve({**BASE, "backend": {"type": "ray"}})
    assert info.value.field == "backend.type" and "not built" in str(info.value)
