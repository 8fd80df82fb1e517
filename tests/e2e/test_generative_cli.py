"""Generative fine-tuning through the services, as a person runs it: `clients/cli.py train` with a
`model_type: llm` config on a JSONL data set, then `predict` with generation overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from tests.generative.conftest import build_tiny_model, llm_config, task_frame

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "clients" / "cli.py")]


def cli(*args, timeout=900):
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )


def test_llm_train_and_predict_through_the_cli(tmp_path):
    base = build_tiny_model(tmp_path / "tiny-llama")
    frame = task_frame()
    data = tmp_path / "instructions.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")))
    cfg = llm_config(base)  # full fine-tuning: the tiny model memorises the lookup
    (tmp_path / "llm.yaml").write_text(yaml.safe_dump(cfg))
    state = tmp_path / "state"
    proc = cli(
        "train",
        "--config",
        tmp_path / "llm.yaml",
        "--training_set",
        data,
        "--test_set",
        data,
        "--data_dir",
        state,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["state"] == "SUCCEEDED"
    test = summary["metrics"]["test"]["answer"]
    assert {"loss", "perplexity", "token_accuracy"} <= set(test)
    artifact = Path(summary["artifact"])
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tunewire.json",
        "README.md",
    } <= {p.name for p in artifact.iterdir()}
    assert "Traceback" not in proc.stderr

    proc = cli(
        "predict",
        "--model",
        artifact,
        "--dataset",
        data,
        "--data_dir",
        state,
        "--output_directory",
        tmp_path / "pred",
        "--generation_config",
        json.dumps({"max_new_tokens": 4}),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    preds = pd.read_csv(tmp_path / "pred" / "predictions.csv", keep_default_na=False)
    assert len(preds) == len(frame)
    # The model was trained on these rows: most answers come back word for word.
    hits = sum(p.strip() == a for p, a in zip(preds["answer_predictions"], frame["answer"]))
    assert hits >= len(frame) // 2, list(zip(preds["answer_predictions"], frame["answer"]))

    proc = cli(
        "predict",
        "--model",
        artifact,
        "--dataset",
        data,
        "--data_dir",
        state,
        "--generation_config",
        json.dumps({"max_new_tokenz": 4}),
    )
    assert proc.returncode != 0 and "generation_config.max_new_tokenz" in proc.stderr
    assert "Traceback" not in proc.stderr
