"""Configs as Ludwig's README and docs publish them (models swapped for the tiny local one) run
with Ludwig's meaning."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from services.trainer.admission import _columns_needed
from services.trainer.context import Progress
from services.trainer.model_types import resolve
from services.trainer.recipes.generative.data import render_prompt
from services.trainer.recipes.generative.launch import run_generative_job
from services.trainer.recipes.generative.predict import predict_generative
from tests.generative.conftest import job_context, llm_config, task_frame
from tunewire.errors import InvalidArgument

# Ludwig's README: the input feature `prompt` is no column; the template builds it.
README_LLM = """
model_type: llm
base_model: BASE
quantization:
  bits: 4
adapter:
  type: lora
prompt:
  template: |
    ### Instruction: {instruction}
    ### Input: {input}
    ### Response:
input_features:
  - name: prompt
    type: text
output_features:
  - name: output
    type: text
trainer:
  type: finetune
  learning_rate: 0.0001
  batch_size: 1
  gradient_accumulation_steps: 16
  epochs: 3
  learning_rate_scheduler:
    decay: cosine
    warmup_fraction: 0.01
backend:
  type: local
"""


def readme_config(base) -> dict:
    return yaml.safe_load(README_LLM.replace("BASE", str(base)))


def alpaca_frame() -> pd.DataFrame:
    rows = [
        {"instruction": "what does", "input": name, "output": f"{color} {fruit}"}
        for name, color, fruit in [
            ("alba", "red", "apple"),
            ("bruno", "blue", "pear"),
            ("carla", "green", "plum"),
            ("dario", "black", "fig"),
        ]
    ]
    return pd.DataFrame(rows)


def test_the_readme_prompt_feature_is_built_from_the_template(tiny_model):
    cfg = resolve(readme_config(tiny_model))  # quantization resolves; it needs a GPU to run
    assert cfg.trainer.gradient_accumulation_steps == 16 and cfg.trainer.batch_size == 1
    # The data set needs the template's columns and the output, not a `prompt` column.
    assert set(_columns_needed(cfg).values()) == {"instruction", "input", "output"}
    row = alpaca_frame().iloc[0].to_dict()
    assert render_prompt(cfg, row) == "### Instruction: what does\n### Input: alba\n### Response:\n"


def test_the_readme_config_trains_on_cpu(tiny_model, tmp_path):
    raw = readme_config(tiny_model)
    del raw["quantization"]  # bitsandbytes needs CUDA; the rest of the shape is the README's
    raw["trainer"].update(gradient_accumulation_steps=2, epochs=1)
    raw["backend"]["trainer"] = {"use_gpu": False}
    df = alpaca_frame()
    ctx, rec = job_context(tmp_path, raw, train=df, validation=df.iloc[:0])
    run_generative_job(ctx)
    steps = rec.of(Progress)
    assert len(steps) == 2  # 4 examples, 1 a micro-batch, 2 micro-batches an optimizer step
    texts, _ = predict_generative(ctx.artifact_dir, df.drop(columns=["output"]), None)
    assert len(texts) == len(df)
    with pytest.raises(InvalidArgument):  # the template's columns are needed to predict
        predict_generative(ctx.artifact_dir, df.drop(columns=["input"]), None)


def test_optimizer_steps_follow_batch_size_and_effective_batch_size(tiny_model, tmp_path):
    """12 examples, batch_size 2, effective_batch_size 8 (4 micro-batches a step): 2 optimizer
    steps an epoch (the last takes the 2 micro-batches left), packed as by default."""
    raw = llm_config(
        tiny_model,
        trainer={"epochs": 2, "batch_size": 2, "effective_batch_size": 8, "eval_steps": None},
    )
    ctx, rec = job_context(tmp_path, raw, validation=task_frame().iloc[:0])
    assert ctx.config.trainer.gradient_accumulation_steps == 4
    assert ctx.config.preprocessing.sequence_packing
    run_generative_job(ctx)
    steps = rec.of(Progress)
    assert [s.step for s in steps] == [1, 2, 3, 4] and steps[-1].total_steps == 4


CATEGORY_OUTPUT = {
    "name": "answer",
    "type": "category",
    "preprocessing": {"fallback_label": "other"},
    "decoder": {
        "type": "category_extractor",
        "match": {
            "red": {"type": "contains", "value": "red"},
            "blue": {"type": "regex", "value": r"\bblue\b"},
        },
    },
}


def test_category_extractor_maps_generated_text_to_a_label(tiny_model):
    raw = llm_config(tiny_model, output_features=[CATEGORY_OUTPUT])
    out = resolve(raw).output
    assert out.decoder.fallback_label == "other"
    assert out.extract_label("A RED apple") == "red"  # lower-cased, first rule that matches
    assert out.extract_label("blue or red") == "red"
    assert out.extract_label("blueish") == "other" and out.extract_label("so blue") == "blue"
    bad = {**CATEGORY_OUTPUT, "decoder": {"type": "category_extractor"}}
    with pytest.raises(Exception) as info:
        resolve(llm_config(tiny_model, output_features=[bad]))
    assert info.value.field == "output_features[0].decoder.match"


def test_category_output_zero_shot_reports_accuracy(tiny_model, tmp_path):
    raw = llm_config(tiny_model, output_features=[CATEGORY_OUTPUT])
    del raw["trainer"]
    df = task_frame()
    df["answer"] = df["answer"].str.split().str[0]  # the colour: a class
    ctx, rec = job_context(tmp_path, raw, train=df.head(6), validation=df[6:], test=None)
    result = run_generative_job(ctx)
    acc = {(m.split, m.name): m.value for m in result.metrics}
    preds = pd.read_csv(ctx.artifact_dir / "predictions.csv", keep_default_na=False)
    val = preds[preds["split"] == "validation"]
    assert set(val["answer_predictions"]) <= {"red", "blue", "other"}
    expected = (val["answer_predictions"] == val["answer"]).mean()
    assert acc[("validation", "accuracy")] == pytest.approx(expected)
    labels, metrics = predict_generative(ctx.artifact_dir, df[6:], None)
    assert labels == list(val["answer_predictions"])
    assert any(m.name == "accuracy" for m in metrics)


def test_category_output_fine_tuned_reports_accuracy(tiny_model, tmp_path):
    raw = llm_config(
        tiny_model,
        output_features=[CATEGORY_OUTPUT],
        trainer={"epochs": 2, "eval_steps": None},
    )
    df = task_frame()
    df["answer"] = df["answer"].str.split().str[0]
    ctx, rec = job_context(tmp_path, raw, train=df, validation=df[:4])
    result = run_generative_job(ctx)
    names = {(m.split, m.name) for m in result.metrics}
    assert {("validation", "accuracy"), ("validation", "loss")} <= names
