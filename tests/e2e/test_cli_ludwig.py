"""The command line as a Ludwig user runs it, through `tunewire`'s real entry point in a
subprocess: `experiment` into Ludwig's layout, statistics files checked against Ludwig's
documented shapes, TensorBoard logs read back with tensorboard's own reader, `evaluate --split`,
`visualize`, `init_config`, `render_config`, `check_install`, "did you mean"."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.e2e.conftest import cli, write_config

ROWS = 300


@pytest.fixture(scope="module")
def run(tmp_path_factory, example_data, minilm):
    """`experiment` on a `.json` records file (Ludwig's JSON) with Ludwig's run naming."""
    root = tmp_path_factory.mktemp("ludwig")
    df = pd.read_csv(example_data / "sms_spam.csv", dtype=str, keep_default_na=False)
    df = df.sample(n=ROWS, random_state=3).reset_index(drop=True)
    df.to_json(root / "sms.json", orient="records")
    df.to_csv(root / "sms_tabs.csv", sep="\t", index=False)  # tab-separated, named .csv
    write_config(root / "spam.yaml", minilm, max_len=32, epochs=3)
    proc = cli(
        "experiment",
        "-c",
        "spam.yaml",
        "--dataset",
        "sms.json",
        "--experiment_name",
        "spam",
        "--model_name",
        "minilm",
        "-rs",
        "7",
        "--data_dir",
        "state",
        "--json",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    return root, proc, json.loads(proc.stdout.strip().splitlines()[-1])


def _check_training_statistics(stats: dict, epochs: int) -> None:
    """Ludwig's documented shape: split → output feature → metric → one value per evaluation."""
    assert set(stats) <= {"training", "validation", "test"} and "training" in stats
    for split, features in stats.items():
        assert features, split
        for feature, metrics in features.items():
            for metric, values in metrics.items():
                assert isinstance(values, list) and values, (split, feature, metric)
                assert all(isinstance(v, float) for v in values)
    assert len(stats["training"]["label"]["loss"]) == epochs
    assert len(stats["validation"]["label"]["accuracy"]) == epochs
    assert stats["training"]["combined"]["loss"] == stats["training"]["label"]["loss"]


def _check_binary_test_statistics(stats: dict, rows: int) -> None:
    label = stats["label"]
    for metric in ("accuracy", "loss", "roc_auc", "precision", "recall"):
        assert isinstance(label[metric], float)
    assert "loss" in stats["combined"]
    cm = np.array(label["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == rows
    assert np.trace(cm) / rows == pytest.approx(label["accuracy"])
    assert set(label["per_class_stats"]) == set(label["labels"])
    positive = label["per_class_stats"][label["labels"][1]]
    assert positive["true_positives"] == cm[1, 1] and positive["false_positives"] == cm[0, 1]
    roc = label["roc_curve"]
    fpr, tpr = roc["false_positive_rate"], roc["true_positive_rate"]
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    auc = float(np.sum(np.diff(fpr) * (np.array(tpr[1:]) + np.array(tpr[:-1])) / 2))
    assert auc == pytest.approx(label["roc_auc"], abs=1e-6)
    pr = label["precision_recall_curve"]
    assert len(pr["precisions"]) == len(pr["recalls"]) and pr["recalls"][-1] == 0.0
    assert "token_accuracy" in label["overall_stats"]
    cal = label["calibration_curve"]
    assert len(cal["mean_predicted_value"]) == len(cal["fraction_of_positives"]) > 0


def test_experiment_writes_ludwigs_layout(run):
    root, proc, summary = run
    out = root / "results" / "spam_minilm"
    assert Path(summary["output_directory"]) == out.resolve()
    assert (out / "model" / "head.safetensors").is_file()
    description = json.loads((out / "description.json").read_text())
    assert description["random_seed"] == 7 and description["config"]["seed"] == 7
    assert description["dataset"] == "sms.json" and description["job_id"] == summary["job_id"]
    _check_training_statistics(json.loads((out / "training_statistics.json").read_text()), 3)
    test_rows = round(ROWS * 0.2)
    _check_binary_test_statistics(json.loads((out / "test_statistics.json").read_text()), test_rows)
    for name in ("predictions.parquet", "predictions.csv"):
        frame = pd.read_parquet(out / name) if name.endswith("parquet") else pd.read_csv(out / name)
        assert len(frame) == test_rows
        assert {"label_predictions", "label_probability", "label_probabilities_True"} <= set(
            frame.columns
        )
    for plot in ("roc", "precision_recall", "calibration", "confusion_matrix"):
        assert (out / f"label_{plot}.png").stat().st_size > 1000
    # Progress named its phases, had elapsed/ETA, and no loader bar leaked through.
    assert "evaluating test" in proc.stderr and "elapsed" in proc.stderr
    assert "embedding training+validation+test" in proc.stderr
    assert "Loading weights" not in proc.stderr and "it/s]" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tensorboard_logs_read_back_with_tensorboards_reader(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, _, _ = run
    logs = root / "results" / "spam_minilm" / "model" / "logs"
    training = EventAccumulator(str(logs / "training")).Reload()
    tags = set(training.Tags()["scalars"])
    assert {"combined/loss", "learning_rate", "throughput/examples_per_second"} <= tags
    assert len(training.Scalars("combined/loss")) == 3
    validation = EventAccumulator(str(logs / "validation")).Reload()
    assert len(validation.Scalars("label/accuracy")) == 3
    test = EventAccumulator(str(logs / "test")).Reload()
    stats = json.loads((root / "results" / "spam_minilm" / "test_statistics.json").read_text())
    assert test.Scalars("label/roc_auc")[0].value == pytest.approx(stats["label"]["roc_auc"])


def test_evaluate_a_split_of_tab_separated_csv_with_plots(run):
    root, _, _ = run
    model = root / "results" / "spam_minilm" / "model"
    proc = cli(
        "evaluate",
        "--model_path",
        model,
        "--dataset",
        "sms_tabs.csv",
        "--split",
        "test",
        "-od",
        "eval",
        "--batch_size",
        "16",
        "--data_dir",
        "state",
        "--json",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # The same rows as the experiment's test split (same seed, same split): the same statistics.
    mine = json.loads((root / "eval" / "test_statistics.json").read_text())
    theirs = json.loads((root / "results" / "spam_minilm" / "test_statistics.json").read_text())
    assert summary["rows"] == round(ROWS * 0.2)
    assert mine["label"]["confusion_matrix"] == theirs["label"]["confusion_matrix"]
    assert (root / "eval" / "label_roc.png").is_file()
    assert len(pd.read_parquet(root / "eval" / "predictions.parquet")) == summary["rows"]


def test_predict_with_data_format_and_the_model_alias(run, minilm):
    root, _, _ = run
    (root / "rows.txt").write_text((root / "sms.json").read_text())
    proc = cli(
        "predict",
        "--model",
        root / "results" / "spam_minilm" / "model",
        "--dataset",
        "rows.txt",
        "--data_format",
        "json",
        "--output_directory",
        "preds",
        "--data_dir",
        "state",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    preds = pd.read_csv(root / "preds" / "predictions.csv")
    assert len(preds) == ROWS
    # The same model as a sentence-transformers folder: stock sentence_transformers computes the
    # head's logit, and its sigmoid is the probability tunewire served.
    from sentence_transformers import SentenceTransformer

    folder = root / "results" / "spam_minilm" / "model" / "sentence_transformers"
    labels = json.loads((folder / "labels.json").read_text())
    st = SentenceTransformer(str(folder), device="cpu")
    texts = pd.read_json(root / "sms.json", dtype=False)["text"].tolist()
    logits = st.encode(texts[:64], convert_to_numpy=True)
    assert logits.shape == (64, 1)
    probability = 1 / (1 + np.exp(-logits[:, 0]))
    column = f"label_probabilities_{labels['labels'][1]}"
    np.testing.assert_allclose(probability, preds[column][:64], atol=2e-4)
    # The encoder's weights are taken as they are, never loaded and saved again.
    assert filecmp.cmp(folder / "model.safetensors", Path(minilm) / "model.safetensors", False)


def test_visualize_draws_ludwigs_plots_from_the_statistics_files(run):
    root, _, _ = run
    out = root / "results" / "spam_minilm"
    for name, flag, path in (
        ("learning_curves", "--training_statistics", out / "training_statistics.json"),
        ("roc_curves_from_test_statistics", "--test_statistics", out / "test_statistics.json"),
        ("precision_recall_curves", "--test_statistics", out / "test_statistics.json"),
        ("calibration_1_vs_all", "--test_statistics", out / "test_statistics.json"),
        ("confusion_matrix", "--test_statistics", out / "test_statistics.json"),
        ("compare_performance", "--test_statistics", out / "test_statistics.json"),
    ):
        proc = cli("visualize", "--visualization", name, flag, path, "-od", root / "viz", "--json")
        assert proc.returncode == 0, (name, proc.stderr)
        files = json.loads(proc.stdout.strip().splitlines()[-1])["files"]
        assert files and all(Path(f).stat().st_size > 1000 for f in files), name
    proc = cli("visualize", "--visualization", "roc_curves")
    assert proc.returncode == 2 and "--test_statistics" in proc.stderr


def test_init_config_infers_types_and_render_config_fills_defaults(run, minilm):
    root, _, _ = run
    frame = pd.read_json(root / "sms.json", dtype=False)
    frame["id"] = range(len(frame))
    frame["stars"] = [str(i % 5 + 1) for i in range(len(frame))]
    frame.to_csv(root / "wide.csv", index=False)
    proc = cli(
        "init_config",
        "--dataset",
        "wide.csv",
        "--target",
        "label",
        "--encoder",
        minilm,
        "-o",
        "auto.yaml",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    auto = yaml.safe_load((root / "auto.yaml").read_text())
    types = {f["name"]: f["type"] for f in auto["input_features"]}
    assert types == {"text": "text", "stars": "category"}  # the id column is left out
    assert auto["output_features"] == [{"name": "label", "type": "binary"}]
    proc = cli("render_config", "-c", "auto.yaml", "-rs", "11", cwd=root)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["seed"] == 11 and resolved["trainer"]["epochs"] > 0
    assert resolved["input_features"][0]["encoder"]["pretrained_model_name_or_path"] == minilm
    proc = cli("render_config", "--config_str", '{"output_features": []}')
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_check_install_trains_a_tiny_model(tmp_path):
    proc = cli("check_install", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is True


def test_mistyped_commands_and_flags_say_did_you_mean():
    proc = cli("experimnet")
    assert proc.returncode == 2 and "did you mean 'experiment'" in proc.stderr
    proc = cli("train", "-c", "x.yaml", "--datset", "y.csv")
    assert proc.returncode == 2 and "did you mean '--dataset'" in proc.stderr
    proc = cli("evaluate", "-m", "x", "--dataset", "y", "--spilt", "test")
    assert "did you mean '--split'" in proc.stderr
