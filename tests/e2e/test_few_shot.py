"""Few-shot retrieval through the services: a `trainer.type: none` job (Ludwig's default llm
trainer) whose prompts take the semantically nearest training rows, embedded by the embedder
service through its cache; Predict on its artifact retrieves from the pool the artifact keeps."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from services.trainer.recipes.generative import retrieval
from services.trainer.recipes.generative.predict import predict_generative
from tests.generative.conftest import build_tiny_model, llm_config, task_frame
from tunewire.config.llm import DEFAULT_TASK_TEMPLATE
from tunewire.errors import FailedPrecondition, TunewireError
from tunewire.v1 import trainer_pb2


def few_shot(base: Path, model_name: str) -> dict:
    cfg = llm_config(base)
    cfg["prompt"] = {
        "task": "say the color",
        "retrieval": {"type": "semantic", "k": 2, "model_name": model_name},
    }
    del cfg["trainer"]  # Ludwig's default llm trainer: none
    return cfg


def _loss(metrics) -> float:
    return next(m.value for m in metrics if (m.split, m.name) == ("test", "loss"))


def test_few_shot_job_and_predict_through_the_services(trainer, embedder, minilm, tmp_path):
    base = build_tiny_model(tmp_path / "tiny-llama")
    df = task_frame()
    train, test = df.head(8), df[8:]
    train_ds = trainer.upload_dataset(train, "train.parquet")
    test_ds = trainer.upload_dataset(test, "test.parquet")
    events: list = []
    job = trainer.create_job(
        few_shot(base, minilm), training_set_id=train_ds.id, test_set_id=test_ds.id
    )
    job = trainer.wait(job.id, on_event=events.append)
    assert job.state == trainer_pb2.Job.SUCCEEDED, job.error
    logs = [e.log.message for e in events if e.WhichOneof("event") == "log"]
    assert any("prompt.retrieval: semantic, k=2, over 8 training rows" in m for m in logs)

    art = Path(job.artifact_path)
    meta = json.loads((art / "tunewire.json").read_text())
    assert any(d.startswith("prompt.retrieval") for d in meta["differences_from_ludwig"])
    pool = pd.read_parquet(art / retrieval.POOL_FILE)
    assert pool.to_dict("records") == train.to_dict("records")  # feature name = column here
    preds = pd.read_csv(art / "predictions.csv", keep_default_na=False)
    for row in preds[preds["split"] == "train"].to_dict("records"):
        nearest = ast.literal_eval(row["__context__"])[0]
        assert nearest == {"name": row["name"], "answer": row["answer"]}  # itself, as in Ludwig

    # Predict (the service's, with its embedder) retrieves from the artifact's pool: the job's
    # answers again, and its test loss.
    resp = trainer.predict(job.id, test_ds.id, evaluate=True)
    expected = list(preds[preds["split"] == "test"]["answer_predictions"])
    assert list(resp.features[0].predictions) == expected
    job_loss = next(m.value for m in job.metrics if (m.split, m.name) == ("test", "loss"))
    assert _loss(resp.metrics) == pytest.approx(job_loss, rel=1e-4)

    # The examples reach the model: the same artifact without retrieval scores otherwise.
    bare = tmp_path / "bare"
    shutil.copytree(art, bare)
    config = json.loads((bare / "resolved_config.json").read_text())
    config["prompt"]["retrieval"] = {"type": None, "k": 0, "model_name": None, "index_name": None}
    config["prompt"]["template"] = DEFAULT_TASK_TEMPLATE
    (bare / "resolved_config.json").write_text(json.dumps(config))
    _, bare_metrics = predict_generative(bare, test, None)
    assert _loss(bare_metrics) != pytest.approx(job_loss, rel=1e-3)

    # Without its pool, the artifact's predict is refused, saying what is missing.
    (bare / "resolved_config.json").write_text((art / "resolved_config.json").read_text())
    (bare / retrieval.POOL_FILE).unlink()
    with pytest.raises(FailedPrecondition, match=retrieval.POOL_FILE):
        predict_generative(bare, test, None, embedder=lambda: embedder)


def test_a_retrieval_encoder_the_embedder_cannot_load_is_refused_at_create(trainer, tmp_path):
    ds = trainer.upload_dataset(task_frame(), "rows.parquet")
    cfg = few_shot(tmp_path, str(tmp_path / "no-such-encoder"))
    with pytest.raises(TunewireError) as info:
        trainer.create_job(cfg, dataset_id=ds.id)
    assert info.value.field == "prompt.retrieval.model_name"
