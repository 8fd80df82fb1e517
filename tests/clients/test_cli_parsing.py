"""The CLI's parser: every flag's help says its default, Ludwig's `-p true|false` and bare
`-p`, `-t/--repo_type` refused beyond models, the console script, the progress lines."""

from __future__ import annotations

import argparse
import io
import tomllib
from pathlib import Path

import pytest

from clients.cli import build_parser, main
from clients.progress import ProgressPrinter, metrics_line, phase_label
from tunewire.v1 import trainer_pb2

ROOT = Path(__file__).resolve().parents[2]


def _subparsers(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subparsers(sub))


def test_every_flag_of_every_command_says_its_default():
    parser = build_parser()
    missing = []
    for name, sub in _subparsers(parser):
        formatter = sub._get_formatter()
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            if "default" not in formatter._get_help_string(action):
                missing.append(f"{name} {action.option_strings[0]}")
            assert text is not None
    assert not missing, missing


@pytest.mark.parametrize(
    "argv, private",
    [
        ([], False),
        (["-p"], True),
        (["-p", "true"], True),
        (["-p", "false"], False),
        (["--private", "yes"], True),
    ],
)
def test_upload_private_takes_the_bare_flag_and_ludwigs_boolean(argv, private):
    args = build_parser().parse_args(["upload", "hf_hub", "-r", "a/b", "-m", "x", *argv])
    assert args.private is private and args.repo_type == "model"


def test_upload_to_a_data_set_repo_is_refused_by_name(tmp_path, capsys):
    code = main(["upload", "hf_hub", "-r", "a/b", "-m", str(tmp_path), "-t", "dataset"])
    assert code == 2 and "repo_type" in capsys.readouterr().err


def test_the_console_script_is_the_cli_main():
    import os
    import subprocess
    import sys

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["tunewire"].split(":")
    assert module == "clients.cli" and func == "main"
    # scripts/setup.sh's `pip install -e .` put it beside the interpreter.
    script = Path(sys.executable).parent / "tunewire"
    done = subprocess.run(
        [str(script), "init_confg"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
    assert done.returncode == 2 and "did you mean 'init_config'" in done.stderr


def test_ludwigs_run_directories_and_skip_flags(tmp_path):
    from clients.commands.layout import experiment_dir, place_run

    first = experiment_dir(tmp_path, "exp", "run")
    assert [first.name, experiment_dir(tmp_path, "exp", "run").name] == ["exp_run", "exp_run_0"]
    assert experiment_dir(tmp_path, "exp", "run").name == "exp_run_1"
    model = first / "model"
    (model / "logs" / "training").mkdir(parents=True)
    (model / "logs" / "training" / "events.out.tfevents.1").write_bytes(b"x")
    (model / "head.safetensors").write_bytes(b"x")
    (model / "training_statistics.json").write_text("{}")
    place_run(model, first, keep_model=False, keep_statistics=True, keep_logs=True)
    assert (first / "training_statistics.json").is_file()
    assert not (model / "head.safetensors").exists()
    assert (model / "logs" / "training" / "events.out.tfevents.1").is_file()
    place_run(model, first, keep_model=False, keep_statistics=True, keep_logs=False)
    assert not model.exists()


def _metrics_event(values) -> trainer_pb2.JobEvent:
    event = trainer_pb2.JobEvent()
    for split, feature, name, value in values:
        event.metrics.metrics.add(split=split, feature=feature, name=name, value=value)
    return event


def test_a_metrics_line_has_each_metric_once():
    one_output = _metrics_event(
        [
            ("validation", "label", "loss", 0.5),
            ("validation", "combined", "loss", 0.5),
            ("validation", "label", "accuracy", 0.9),
            ("validation", "label", "accuracy", 0.9),
        ]
    ).metrics.metrics
    assert metrics_line(one_output) == "validation/loss=0.5000  validation/accuracy=0.9000"
    two = _metrics_event(
        [("test", "a", "loss", 1.0), ("test", "b", "loss", 2.0), ("test", "combined", "loss", 3.0)]
    ).metrics.metrics
    assert metrics_line(two) == "test/a/loss=1.0000  test/b/loss=2.0000  test/combined/loss=3.0000"


def test_progress_lines_name_the_phase_and_split_with_elapsed_and_eta():
    assert phase_label("train") == "training" and phase_label("evaluating train") == (
        "evaluating training"
    )
    assert phase_label("embedding train+test") == "embedding training+test"
    out = io.StringIO()
    printer = ProgressPrinter(stream=out)
    event = trainer_pb2.JobEvent()
    event.progress.phase, event.progress.step, event.progress.total_steps = "evaluating test", 4, 4
    printer(event)
    printer.close()
    assert out.getvalue().startswith("evaluating test") and "elapsed, eta" in out.getvalue()


def test_on_a_terminal_the_bars_are_rich():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    printer = ProgressPrinter(stream=out)
    event = trainer_pb2.JobEvent()
    event.progress.phase, event.progress.step, event.progress.total_steps = "embedding", 5, 10
    printer(event)
    printer.close()
    assert "embedding" in out.getvalue() and "5/10" in out.getvalue()


def test_description_json_keeps_no_token():
    from clients.commands.layout import description

    desc = description(
        command=["tunewire", "train", "--token", "s3cret", "--token=also"],
        config={},
        datasets={"dataset": "d.csv"},
        data_format=None,
        random_seed=42,
        job_id="job-1",
    )
    assert "s3cret" not in str(desc) and "also" not in str(desc)
    assert desc["command"] == "tunewire train --token *** --token=***"
