"""Ludwig's default llm trainer (`type: none`): the base model is evaluated and answers every row,
sampling seeded, nothing trained; the artifact references the base model, predict works on it,
and uploading it is refused."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from services.hub_gateway.validate import validate
from services.trainer.context import Log, Progress
from services.trainer.recipes.generative.launch import run_generative_job
from services.trainer.recipes.generative.predict import predict_generative
from tests.generative.conftest import job_context, llm_config, task_frame
from tunewire.errors import InvalidArgument


def test_no_trainer_section_evaluates_the_base_model(tiny_model, tmp_path):
    raw = llm_config(tiny_model, generation={"max_new_tokens": 3, "do_sample": True})
    del raw["trainer"]  # Ludwig's default: zero-shot
    df = task_frame()
    ctx, rec = job_context(tmp_path, raw, train=df.head(6), validation=df[6:9], test=df[9:])
    result = run_generative_job(ctx)

    assert not rec.of(Progress)  # no optimizer step
    assert any("nothing is trained" in e.message for e in rec.of(Log))
    assert {(m.split, m.name) for m in result.metrics} >= {
        ("validation", "loss"),
        ("test", "token_accuracy"),
    }
    art = ctx.artifact_dir
    names = {p.name for p in art.iterdir()}
    assert {"resolved_config.json", "tunewire.json", "predictions.csv"} <= names
    assert not any(n.endswith((".safetensors", ".bin")) for n in names)  # no weights copied
    meta = json.loads((art / "tunewire.json").read_text())
    assert meta["kind"] == "zero_shot" and meta["base_model"] == str(tiny_model)
    assert json.loads((art / "resolved_config.json").read_text())["trainer"]["type"] == "none"

    preds = pd.read_csv(art / "predictions.csv", keep_default_na=False)
    assert len(preds) == len(df) and set(preds["split"]) == {"train", "validation", "test"}
    # Sampling is seeded by the job's seed: predict on the artifact gives the job's answers.
    texts, metrics = predict_generative(art, df[9:], None)
    assert texts == list(preds[preds["split"] == "test"]["answer_predictions"])
    assert {m.name for m in metrics} == {"loss", "perplexity", "token_accuracy"}

    with pytest.raises(InvalidArgument) as info:
        validate(art)
    assert info.value.reason == "NOTHING_TRAINED"
