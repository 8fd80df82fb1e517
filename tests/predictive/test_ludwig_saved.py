"""A Ludwig-saved ecd config (`model_hyperparameters.json` as Ludwig 0.17 writes it: a filled
`defaults:` block for every feature type, initializers, `proc_column`...) loads through the CLI's
reader, keeps Ludwig's meaning, and trains as a job through the trainer's admission."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.trainer.model_types import resolve
from tests.predictive.conftest import run_job
from tunewire.config import ConfigError, load

ROOT = Path(__file__).resolve().parents[2]
SAVED = ROOT / "tests" / "fixtures" / "ludwig" / "ecd_model_hyperparameters.json"


@pytest.fixture
def saved(minilm, tmp_path) -> Path:
    (tmp_path / "minilm").symlink_to(minilm)
    shutil.copy(SAVED, tmp_path / "model_hyperparameters.json")
    return tmp_path / "model_hyperparameters.json"


def frame(example_data: Path, rows: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    sms = pd.read_csv(example_data / "sms_spam.csv", dtype=str, keep_default_na=False)
    sms = sms.sample(n=rows, random_state=0).reset_index(drop=True)
    num = rng.normal(size=rows)
    cat = rng.choice(["A", "B", "C"], size=rows)
    return pd.DataFrame(
        {
            "text": sms["text"],
            "num": np.round(num, 4),
            "cat": cat,
            "flag": np.where(rng.random(rows) < 0.4, "yes", "no"),
            "spam": np.where(sms["label"] == "1", "spam", "ham"),
            "score": np.round(2 * num + (cat == "B"), 4),
        }
    )


def test_a_ludwig_saved_ecd_config_keeps_ludwigs_meaning(saved):
    cfg = resolve(load(saved))
    text, num, cat, _flag = cfg.input_features
    assert text.encoder.reduce_output == "sum"  # Ludwig 0.17's auto_transformer default
    assert text.preprocessing.max_sequence_length == 32
    assert (num.preprocessing.missing_value_strategy, num.preprocessing.fill_value) == (
        "fill_with_const",
        0.0,
    )
    assert cat.preprocessing.missing_value_strategy == "fill_with_unk"  # Ludwig: const <UNK>
    assert (cfg.combiner.type, cfg.combiner.num_fc_layers, cfg.combiner.output_size) == (
        "concat",
        1,
        64,
    )
    t = cfg.trainer
    assert (t.epochs, t.batch_size, t.learning_rate) == (3, 64, 0.003)
    assert (t.validation_field, t.validation_metric) == ("spam", "roc_auc")
    assert cfg.defaults is None


def test_a_ludwig_saved_ecd_config_trains_through_admission(saved, trainer, example_data):
    ds = trainer.upload_dataset(frame(example_data).to_csv(index=False).encode(), "saved.csv")
    job, _ = run_job(trainer, load(saved), dataset_id=ds.id)
    names = {(m.split, m.feature, m.name) for m in job.metrics}
    assert ("test", "spam", "roc_auc") in names and ("test", "score", "r2") in names


def test_a_filled_defaults_block_with_an_effect_is_honoured_or_refused(saved):
    raw = load(saved)
    # The features state their own preprocessing; a default only fills what they leave out.
    del raw["input_features"][1]["preprocessing"]["normalization"]
    raw["defaults"]["number"]["preprocessing"]["normalization"] = "minmax"
    assert resolve(raw).input_features[1].preprocessing.normalization == "minmax"
    del raw["input_features"][1]["preprocessing"]["outlier_strategy"]
    raw["defaults"]["number"]["preprocessing"]["outlier_strategy"] = "clip"
    with pytest.raises(ConfigError) as info:
        resolve(raw)
    assert info.value.field == "input_features[1].preprocessing.outlier_strategy"


@pytest.mark.parametrize("kind", [[], {}, 3])
def test_a_feature_type_that_is_no_string_is_refused_by_its_field(kind):
    """Hypothesis found `type: []` crashing the Ludwig-saved normalisation (INTERNAL)."""
    from tunewire.errors import InvalidArgument

    raw = {
        "input_features": [{"name": "text", "type": kind, "encoder": {"type": "bert"}}],
        "output_features": [{"name": "label", "type": "binary"}],
        "defaults": {"text": {"encoder": {"type": "bert"}}},
    }
    with pytest.raises(InvalidArgument) as info:
        resolve(raw)
    assert info.value.field == "input_features[0].type"
