"""Predictive fine-tuning end to end over real gRPC on loopback, with the real all-MiniLM-L6-v2
(frozen, embeddings through the embedder's LMDB cache) and the offline data sets."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from clients.sdk import metrics_dict, predictions_frame
from tests.e2e.conftest import subset, text_config
from tunewire.errors import InvalidArgument
from tunewire.v1 import trainer_pb2

SUCCEEDED = trainer_pb2.Job.SUCCEEDED


def run(trainer, config, **datasets):
    job = trainer.create_job(config, **datasets)
    events = []
    job = trainer.wait(job.id, on_event=events.append)
    assert job.state == SUCCEEDED, job.error
    return job, events


def cache_log(events) -> str:
    return next(
        e.log.message
        for e in events
        if e.WhichOneof("event") == "log" and "distinct texts" in e.log.message
    )


@pytest.mark.slow
def test_sms_spam_whole_data_set(trainer, embedder, example_data, minilm):
    ds = trainer.upload_dataset(example_data / "sms_spam.csv")
    assert ds.rows == 4837
    cfg = text_config(
        minilm,
        {"name": "label", "type": "binary"},
        preprocessing={
            "split": {"type": "stratify", "column": "label", "probabilities": [0.8, 0.0, 0.2]}
        },
        trainer={"epochs": 20, "batch_size": 64, "early_stop": -1},
    )
    job, events = run(trainer, cfg, dataset_id=ds.id)
    m = metrics_dict(job.metrics)
    assert m["test"]["label"]["accuracy"] >= 0.96, m["test"]
    assert m["test"]["label"]["roc_auc"] >= 0.97
    phases = {e.progress.phase for e in events if e.WhichOneof("event") == "progress"}
    assert {"training", "evaluating test"} <= phases
    # The embedding phase names the splits embedded together (no validation split here).
    assert any(p.startswith("embedding train") and p.endswith("test") for p in phases), phases
    # Same texts, same encoder: a second job computes nothing new and is faster.
    stats = embedder.cache_stats()
    t0 = time.monotonic()
    job2, events2 = run(
        trainer,
        {**cfg, "trainer": {"epochs": 20, "batch_size": 64, "early_stop": -1}},
        dataset_id=ds.id,
    )
    second = time.monotonic() - t0
    first = (job.end_time.ToNanoseconds() - job.start_time.ToNanoseconds()) / 1e9
    after = embedder.cache_stats()
    # No text is computed again. (Entries may grow: the embedder also stores whole answers
    # for replays, which are not new embeddings.)
    assert after.misses == stats.misses and after.computed_texts == stats.computed_texts
    distinct = pd.read_csv(example_data / "sms_spam.csv", dtype=str, keep_default_na=False)
    assert after.hits - stats.hits == distinct["text"].nunique()
    assert "0 computed" in cache_log(events2)
    assert second < first, (second, first)


def test_trec_question_types(trainer, example_data, minilm):
    ds = trainer.upload_dataset(subset(example_data / "trec_questions.csv", 5000), "trec.csv")
    cfg = text_config(
        minilm,
        {"name": "label", "type": "category"},
        epochs=40,
        trainer={
            "epochs": 40,
            "batch_size": 64,
            "learning_rate": 0.002,
            "early_stop": 6,
            "validation_metric": "accuracy",
        },
    )
    job, _ = run(trainer, cfg, dataset_id=ds.id)
    test = metrics_dict(job.metrics)["test"]["label"]
    assert test["accuracy"] >= 0.80, test
    assert test["macro_f1"] > 0.5


def test_movie_sentiment_regression(trainer, example_data, minilm):
    ds = trainer.upload_dataset(subset(example_data / "movie_sentiment.csv", 4000), "movies.csv")
    cfg = text_config(
        minilm,
        {"name": "score", "type": "number"},
        max_len=128,
        trainer={"epochs": 40, "batch_size": 64, "early_stop": 6, "validation_metric": "r2"},
    )
    job, _ = run(trainer, cfg, dataset_id=ds.id)
    test = metrics_dict(job.metrics)["test"]["score"]
    assert test["r2"] >= 0.40, test


def test_predict_reproduces_the_trainers_test_predictions(
    trainer, services, example_data, minilm, tmp_path
):
    df = pd.read_csv(example_data / "sms_spam.csv", dtype=str, keep_default_na=False)
    df = df.sample(n=900, random_state=3).reset_index(drop=True)
    parts = {"training_set_id": df[:600], "validation_set_id": df[600:700], "test_set_id": df[700:]}
    ids = {
        k: trainer.upload_dataset(v.to_csv(index=False).encode(), f"{k}.csv").id
        for k, v in parts.items()
    }
    cfg = text_config(minilm, {"name": "label", "type": "binary"}, epochs=10)
    job, _ = run(trainer, cfg, **ids)
    own = pd.read_csv(services.data_dir / "jobs" / job.id / "test_predictions.csv", dtype=str)
    resp = trainer.predict(job.id, ids["test_set_id"], evaluate=True)
    got = predictions_frame(resp)
    assert list(got["label_predictions"]) == list(own["label_predictions"])
    np.testing.assert_allclose(
        got["label_probabilities_True"].astype(float),
        own["label_probabilities_True"].astype(float),
        rtol=1e-5,
    )
    evaluated = metrics_dict(resp.metrics)["test"]["label"]
    recorded = metrics_dict(job.metrics)["test"]["label"]
    assert evaluated["accuracy"] == pytest.approx(recorded["accuracy"])
    # The artifact also works by path, and downloads whole.
    local = trainer.download_artifact(job.id, tmp_path / "artifact")
    assert {
        "head.safetensors",
        "tunewire.json",
        "resolved_config.json",
        "training_set_metadata.json",
    } <= {p.name for p in local.iterdir()}
    by_path = trainer.predict(str(local), ids["test_set_id"])
    assert list(by_path.features[0].predictions) == list(own["label_predictions"])


def test_pooling_or_max_length_change_computes_new_embeddings(
    trainer, embedder, example_data, minilm
):
    data = subset(example_data / "sms_spam.csv", 300, seed=11)
    ds = trainer.upload_dataset(data, "small.csv")
    cfg = text_config(minilm, {"name": "label", "type": "binary"}, epochs=2, max_len=32)
    _, ev1 = run(trainer, cfg, dataset_id=ds.id)
    _, ev2 = run(trainer, cfg, dataset_id=ds.id)
    assert "0 computed" in cache_log(ev2)
    cfg["input_features"][0]["encoder"]["reduce_output"] = "max"
    _, ev3 = run(trainer, cfg, dataset_id=ds.id)
    assert "0 from the cache" in cache_log(ev3)
    cfg["input_features"][0]["preprocessing"]["max_sequence_length"] = 33
    _, ev4 = run(trainer, cfg, dataset_id=ds.id)
    assert "0 from the cache" in cache_log(ev4)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda c: c["input_features"][0].update(column="body"), "input_features[0].column"),
        (lambda c: c["output_features"][0].update(type="image"), "output_features[0].type"),
        (lambda c: c["trainer"].update(epochz=3), "trainer.epochz"),
        (
            lambda c: c["input_features"][0]["encoder"].update(
                pretrained_model_name_or_path="/no/such/encoder"
            ),
            "input_features[0].encoder.pretrained_model_name_or_path",
        ),
    ],
)
def test_bad_input_fails_the_create_with_the_field(trainer, example_data, minilm, change, field):
    ds = trainer.upload_dataset(subset(example_data / "sms_spam.csv", 50), "tiny.csv")
    cfg = text_config(minilm, {"name": "label", "type": "binary"})
    change(cfg)
    before = len(trainer.list_jobs())
    with pytest.raises(InvalidArgument) as info:
        trainer.create_job(cfg, dataset_id=ds.id)
    assert info.value.field == field
    assert len(trainer.list_jobs()) == before  # nothing queued


def test_unparseable_labels_fail_the_create_with_the_row(trainer, minilm):
    data = b"text,label\nhello,1\nworld,0\nagain,maybe\n"
    ds = trainer.upload_dataset(data, "labels.csv")
    cfg = text_config(
        minilm,
        {"name": "label", "type": "number"},
        preprocessing={"split": {"probabilities": [1.0, 0.0, 0.0]}},
    )
    with pytest.raises(InvalidArgument) as info:
        trainer.create_job(cfg, dataset_id=ds.id)
    assert info.value.field == "output_features[0].column"
    assert "'maybe'" in info.value.message and "row 2" in info.value.message
