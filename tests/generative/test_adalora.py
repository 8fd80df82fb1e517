"""AdaLoRA trains for real: the loss falls, the rank budget is reallocated (fewer triplets kept
than `init_r` gave), and stock peft loads the pruned adapter."""

from __future__ import annotations

import json

from services.trainer.context import Progress
from services.trainer.recipes.generative.launch import run_generative_job
from services.trainer.recipes.generative.predict import predict_generative
from tests.generative.conftest import (
    fresh_process_generate,
    job_context,
    llm_config,
    prompts,
    task_frame,
)


def test_adalora_trains_and_reallocates_its_rank_budget(tiny_model, tmp_path):
    adapter = {
        "type": "adalora",
        "init_r": 6,
        "target_r": 2,
        "alpha": 12,
        "dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
    }
    trainer = {"epochs": 8, "learning_rate": 0.02, "eval_steps": None}
    raw = llm_config(tiny_model, adapter=adapter, trainer=trainer)
    ctx, rec = job_context(tmp_path, raw, validation=task_frame().iloc[:0])
    run_generative_job(ctx)
    losses = [e.loss for e in rec.of(Progress)]
    total = rec.of(Progress)[-1].total_steps
    assert len(losses) == total
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3])

    config = json.loads((ctx.artifact_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["total_step"] == total  # null: the job's
    kept = [sum(mask) for mask in config["rank_pattern"].values()]
    layers = 2 * 2  # two layers, q_proj and v_proj
    assert len(kept) == layers and sum(kept) == 2 * layers < 6 * layers  # the target budget

    df = task_frame().head(4)
    ours, _ = predict_generative(ctx.artifact_dir, df, None)
    assert fresh_process_generate(ctx.artifact_dir, prompts(df)) == ours
