"""Train → upload on success → download from a Hub-compatible server → tunewire predict on the
downloaded predictive artifact gives the trainer's own predictions. The uploaded files name the
local encoder as `<local>/NAME`; a trainer that registers NAME (`--model NAME=PATH`) finds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import HUB_TOKEN, subset, text_config


def test_train_with_upload_to_then_predict_from_the_hub(hub, tmp_path, example_data, minilm):
    from huggingface_hub import snapshot_download

    from clients.embedded import start_embedded
    from clients.sdk import TrainerClient, predictions_frame
    from tunewire.v1 import trainer_pb2

    data = subset(example_data / "sms_spam.csv", 300, seed=21)
    # MiniLM's folder is named `model`: the artifact from the Hub names it `<local>/model`.
    with start_embedded(tmp_path / "state", models={Path(minilm).name: minilm}) as services:
        trainer = TrainerClient(services.trainer_address)
        ds = trainer.upload_dataset(data, "spam.csv")
        cfg = text_config(minilm, {"name": "label", "type": "binary"}, epochs=3, max_len=32)
        job = trainer.create_job(cfg, dataset_id=ds.id, upload_to="acme/spam-head")
        job = trainer.wait(job.id)
        assert job.state == trainer_pb2.Job.SUCCEEDED, job.error
        assert job.upload_id
        # One commit for the artifact on top of the repo's initial commit.
        assert len(hub.commits_on("acme/spam-head")) == 2
        local = snapshot_download(
            "acme/spam-head",
            endpoint=hub.endpoint,
            token=HUB_TOKEN,
            cache_dir=tmp_path / "hf-cache",
        )
        names = set(os.listdir(local))
        assert {"head.safetensors", "tunewire.json", "README.md"} <= names
        card = open(os.path.join(local, "README.md")).read()
        assert "base_model" in card and HUB_TOKEN not in card
        mine = trainer.predict(job.id, ds.id)
        theirs = trainer.predict(local, ds.id)
        assert list(predictions_frame(theirs)["label_predictions"]) == list(
            predictions_frame(mine)["label_predictions"]
        )
        trainer.close()


def test_a_local_encoder_nobody_registered_is_a_clear_error():
    from services.trainer.recipes.predictive.predict import _find_local_encoders
    from tunewire.encoder_spec import EncoderSpec
    from tunewire.errors import FailedPrecondition
    from tunewire.heads import EncoderRef

    ref = EncoderRef(EncoderSpec("<local>/model", "mean", 32, False, layer=-1))
    with pytest.raises(FailedPrecondition, match="--model model=PATH"):
        _find_local_encoders({"text": ref}, {})
    _find_local_encoders({"text": ref}, {"model": "/models/minilm"})
    assert ref.spec.model == "/models/minilm"
