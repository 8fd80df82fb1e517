"""Frozen (cached through the embedder) against PEFT-adapted text encoders, on the offline TREC
question types: a tiny decoder-only Llama (`encoder: {type: llm}`) and the real MiniLM. Both paths
must clearly beat the majority class; with the same epochs the adapted one should beat the frozen
one, and the numbers are printed either way (`-s`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clients.sdk import metrics_dict
from tests.e2e.conftest import subset
from tests.predictive.conftest import logs, run_job

N_ROWS = 1500


def encoder_config(
    model: str,
    *,
    llm: bool,
    trainable: bool,
    epochs: int,
    lr: float,
    max_len: int = 32,
    pooling: str | None = None,
    export_shape: bool = False,
) -> dict:
    encoder: dict = (
        {"type": "llm", "base_model": model}
        if llm
        else {"type": "auto_transformer", "pretrained_model_name_or_path": model}
    )
    encoder["trainable"] = trainable
    if pooling:
        encoder["reduce_output"] = pooling
    if trainable:
        encoder["adapter"] = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0}
    decoder = (
        {"num_fc_layers": 0, "use_bias": False}
        if export_shape
        else {"num_fc_layers": 1, "fc_output_size": 128}
    )
    return {
        "input_features": [
            {
                "name": "text",
                "type": "text",
                "encoder": encoder,
                "preprocessing": {"max_sequence_length": max_len},
            }
        ],
        "output_features": [{"name": "label", "type": "category", "decoder": decoder}],
        "trainer": {
            "epochs": epochs,
            "batch_size": 32,
            "learning_rate": lr,
            "early_stop": -1,
            "validation_metric": "accuracy",
        },
        "preprocessing": {
            "split": {"type": "stratify", "column": "label", "probabilities": [0.7, 0.1, 0.2]}
        },
    }


def majority(path: Path) -> float:
    labels = pd.read_csv(path, dtype=str, keep_default_na=False)["label"]
    return float(labels.value_counts(normalize=True).iloc[0])


@pytest.fixture(scope="module")
def trec(trainer, example_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("trec") / "trec.csv"
    path.write_bytes(subset(example_data / "trec_questions.csv", N_ROWS, seed=1))
    return trainer.upload_dataset(path), majority(path)


def frozen_vs_adapted(
    trainer, ds, model: str, *, llm: bool, epochs: int, lr_frozen: float, lr_adapted: float, **kw
) -> tuple[dict, dict, tuple]:
    frozen_job, _ = run_job(
        trainer,
        encoder_config(model, llm=llm, trainable=False, epochs=epochs, lr=lr_frozen, **kw),
        dataset_id=ds.id,
    )
    adapted_job, events = run_job(
        trainer,
        encoder_config(model, llm=llm, trainable=True, epochs=epochs, lr=lr_adapted, **kw),
        dataset_id=ds.id,
    )
    frozen = metrics_dict(frozen_job.metrics)["test"]["label"]
    adapted = metrics_dict(adapted_job.metrics)["test"]["label"]
    return frozen, adapted, (frozen_job, adapted_job, events)


@pytest.fixture(scope="module")
def tiny_jobs(trainer, trec, tiny_llama):
    """Frozen and adapted tiny-Llama jobs, their heads one bias-free linear layer (export shape)."""
    ds, base = trec
    frozen, adapted, (frozen_job, adapted_job, events) = frozen_vs_adapted(
        trainer,
        ds,
        tiny_llama,
        llm=True,
        epochs=8,
        lr_frozen=0.01,
        lr_adapted=0.005,
        export_shape=True,
    )
    print(
        f"\nTREC {N_ROWS} rows, tiny Llama (2 layers, 64 wide, random), last-token pooling, "
        f"8 epochs: majority {base:.3f}, frozen {frozen['accuracy']:.3f}, adapted "
        f"{adapted['accuracy']:.3f}"
    )
    return {
        "base": base,
        "frozen": (frozen, frozen_job),
        "adapted": (adapted, adapted_job),
        "adapted_events": events,
    }


@pytest.mark.slow
def test_tiny_llama_frozen_and_adapted(tiny_jobs):
    base = tiny_jobs["base"]
    (frozen, _), (adapted, adapted_job) = tiny_jobs["frozen"], tiny_jobs["adapted"]
    assert frozen["accuracy"] > base + 0.15, (frozen, base)
    assert adapted["accuracy"] > base + 0.25, (adapted, base)
    assert adapted["accuracy"] > frozen["accuracy"] + 0.03, (adapted, frozen)
    artifact = Path(adapted_job.artifact_path)
    manifest = json.loads((artifact / "tunewire.json").read_text())
    assert manifest["encoders"]["text"]["adapted"] is True
    assert (artifact / "encoder_adapter" / "adapter_config.json").is_file()
    assert any("LoRA" in m for m in logs(tiny_jobs["adapted_events"]))


STOCK_PREDICT = """
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
path, max_len = sys.argv[1], int(sys.argv[2])
texts = json.load(sys.stdin)
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForSequenceClassification.from_pretrained(path).eval()
with torch.no_grad():
    batch = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    probs = torch.softmax(model(**batch).logits, dim=-1)
labels = [model.config.id2label[int(i)] for i in probs.argmax(-1)]
print(json.dumps({"labels": labels, "probs": probs.tolist(), "class": type(model).__name__}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("path", ["frozen", "adapted"])
def test_export_loads_and_predicts_without_tunewire(path, tiny_jobs, trainer, example_data):
    """The `hf_sequence_classification/` checkpoint, in a fresh interpreter that never imports
    tunewire, predicts the classes (and probabilities) that tunewire's own predict gives."""
    from clients.sdk import predictions_frame

    job = tiny_jobs[path][1]
    export = Path(job.artifact_path) / "hf_sequence_classification"
    assert (export / "config.json").is_file()
    rows = pd.read_csv(
        example_data / "trec_questions.csv", dtype=str, keep_default_na=False
    ).sample(n=120, random_state=7)
    ds = trainer.upload_dataset(rows.to_csv(index=False).encode(), "probe.csv")
    ours = predictions_frame(trainer.predict(job.artifact_path, ds.id))
    proc = subprocess.run(
        [sys.executable, "-c", STOCK_PREDICT, str(export), "32"],
        input=json.dumps(list(rows["text"])),
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stock = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stock["class"] == "LlamaForSequenceClassification"
    assert stock["labels"] == list(ours["label_predictions"])
    cfg = json.loads((export / "config.json").read_text())
    names = [cfg["id2label"][str(i)] for i in range(len(cfg["id2label"]))]
    theirs = np.array(stock["probs"])
    mine = ours[[f"label_probabilities_{n}" for n in names]].to_numpy(dtype=float)
    np.testing.assert_allclose(theirs, mine, atol=2e-4)


@pytest.mark.slow
def test_minilm_frozen_and_adapted(trainer, trec, minilm):
    ds, base = trec
    frozen, adapted, _ = frozen_vs_adapted(
        trainer, ds, minilm, llm=False, epochs=2, lr_frozen=0.002, lr_adapted=0.002
    )
    print(
        f"\nTREC {N_ROWS} rows, MiniLM, mean pooling, 2 epochs: majority {base:.3f}, frozen "
        f"{frozen['accuracy']:.3f}, adapted {adapted['accuracy']:.3f}"
    )
    assert frozen["accuracy"] > base + 0.2, (frozen, base)
    assert adapted["accuracy"] > base + 0.2, (adapted, base)
    assert adapted["accuracy"] > frozen["accuracy"], (adapted, frozen)


TEXTS = [
    "What is the capital of France ?",
    "Why ?",
    "",
    "How many people live in the largest city of the country with the most lakes ?",
    "Free entry in 2 a wkly comp to win FA Cup final tkts",
]


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "cls", "sum"])
def test_adapted_encoder_pools_as_the_embedder_does(pooling, embedder, tiny_llama):
    """Before training (LoRA's B is zero) the trainer's encoder gives the embedder's vectors for
    every reduce_output, padding and all: the two paths feed the head the same space."""
    import torch

    from clients.sdk import EncoderSpec
    from services.trainer.recipes.predictive.adapted import AdaptedEncoder, wrap_lora
    from tunewire.config.ecd import EncoderConfig
    from tunewire.config.schema import parse
    from tunewire.heads import EncoderRef

    ref = EncoderRef(
        EncoderSpec(model=tiny_llama, pooling=pooling, max_length=16, normalize=False, layer=0),
        feature="text",
        adapted=True,
    )
    base, tokenizer = AdaptedEncoder.load_base(ref, torch.device("cpu"))
    cfg = parse(
        EncoderConfig,
        {"type": "llm", "base_model": tiny_llama, "trainable": True, "adapter": {"type": "lora"}},
    )
    encoder = AdaptedEncoder(wrap_lora(base, cfg), tokenizer, ref, torch.device("cpu")).eval()
    with torch.no_grad():
        ours = encoder(TEXTS).numpy()
    theirs = embedder.embed_many(
        TEXTS, EncoderSpec(tiny_llama, pooling=pooling, max_length=16)
    ).vectors
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
