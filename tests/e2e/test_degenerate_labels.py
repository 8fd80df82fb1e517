"""Labels a model cannot learn from: a training split of one class trains with a warning and
`--json` stays valid JSON (undefined metrics are null, not a bare NaN); a test split holding a
class the training split lacks fails with that data error, not with "internal error:
AttributeError" from the recipe's cleanup."""

from __future__ import annotations

import json

import pandas as pd

from tests.e2e.conftest import cli, write_config
from tunewire.v1 import trainer_pb2


def test_one_class_trains_with_a_warning_and_json_has_null(tmp_path, minilm, services):
    data = tmp_path / "one.csv"
    pd.DataFrame({"text": [f"message {i}" for i in range(30)], "label": ["yes"] * 30}).to_csv(
        data, index=False
    )
    cfg = write_config(tmp_path / "one.yaml", minilm, epochs=1)
    proc = cli(
        "train", "--config", cfg, "--dataset", data, "--json",
        env={"TUNEWIRE_TRAINER": services.trainer_address},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert "NaN" not in last
    summary = json.loads(last)
    assert summary["metrics"]["train"]["label"]["roc_auc"] is None
    assert "every label of 'label' in the train split is 'yes'" in proc.stderr


def test_a_test_class_unseen_in_training_is_the_jobs_error(tmp_path, minilm, trainer):
    train = tmp_path / "train.csv"
    test = tmp_path / "test.csv"
    pd.DataFrame({"text": [f"t {i}" for i in range(12)], "label": ["a", "b"] * 6}).to_csv(
        train, index=False
    )
    pd.DataFrame({"text": [f"o {i}" for i in range(6)], "label": ["a", "b", "c"] * 2}).to_csv(
        test, index=False
    )
    config = {
        "input_features": [
            {
                "name": "text",
                "type": "text",
                "encoder": {"type": "auto_transformer", "pretrained_model_name_or_path": minilm},
            }
        ],
        "output_features": [{"name": "label", "type": "category"}],
        "trainer": {"epochs": 1},
    }
    job = trainer.create_job(
        config,
        training_set_id=trainer.upload_dataset(train).id,
        test_set_id=trainer.upload_dataset(test).id,
    )
    job = trainer.wait(job.id)
    assert job.state == trainer_pb2.Job.FAILED
    assert "class 'c' in column 'label' was not seen in training" in job.error
    assert "AttributeError" not in job.error
