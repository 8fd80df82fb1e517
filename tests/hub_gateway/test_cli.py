"""`upload hf_hub`: flags in both spellings, --dry_run, a real upload through --hub-gateway."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients.commands import upload
from tests.hub_gateway.conftest import TOKEN

ROOT = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tunewire")
    upload.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_ludwig_and_dashed_spellings_parse_the_same():
    ludwig = parse(
        [
            "upload",
            "hf_hub",
            "--repo_id",
            "o/n",
            "--model_path",
            "p",
            "--private",
            "--commit_message",
            "m",
            "--commit_description",
            "d",
            "--dry_run",
            "--create_pr",
            "--hub_gateway",
            "h:1",
        ]
    )
    dashed = parse(
        [
            "upload",
            "hf_hub",
            "--repo-id",
            "o/n",
            "--model-path",
            "p",
            "-p",
            "-c",
            "m",
            "-d",
            "d",
            "--dry-run",
            "--create-pr",
            "--hub-gateway",
            "h:1",
        ]
    )
    short = parse(
        [
            "upload",
            "hf_hub",
            "-r",
            "o/n",
            "-m",
            "p",
            "-p",
            "-c",
            "m",
            "-d",
            "d",
            "--dry_run",
            "--create_pr",
            "--hub-gateway",
            "h:1",
        ]
    )
    assert vars(ludwig) == vars(dashed) == vars(short)
    assert ludwig.private is True and ludwig.repo_id == "o/n" and ludwig.func is upload.run
    assert parse(["upload", "hf_hub", "-r", "o/n", "-m", "p"]).private is False


def test_dry_run_prints_files_and_card_and_sends_nothing(
    hub, full_model, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    args = parse(
        [
            "upload",
            "hf_hub",
            "-r",
            "org/dry",
            "-m",
            str(full_model),
            "--dry_run",
            "--endpoint",
            hub.endpoint,
            "--data_dir",
            str(tmp_path / "state"),
        ]
    )
    assert upload.run(args) == 0
    out = capsys.readouterr().out
    assert "full_model artifact" in out and "model.safetensors" in out and "README.md" in out
    assert "library_name: transformers" in out
    assert hub.count("repos_created") == 0 and hub.count("commits") == 0


def test_upload_through_a_gateway(hub, gateway_address, adapter_model, capsys):
    args = parse(
        [
            "upload",
            "hf_hub",
            "-r",
            "org/cli",
            "-m",
            str(adapter_model),
            "-p",
            "-c",
            "from the CLI",
            "--hub-gateway",
            gateway_address,
        ]
    )
    assert upload.run(args) == 0
    out = capsys.readouterr()
    assert "uploaded 5 files (0 unchanged) to org/cli" in out.out
    assert hub.repo("org/cli")["private"] is True and hub.count("commits") == 1
    head = hub.repo("org/cli")["commits"][hub.commits_on("org/cli")[0]]
    assert head["summary"] == "from the CLI"


def test_errors_are_one_line_without_traceback(hub, gateway_address, full_model, capsys):
    (full_model / "config.json").unlink()
    args = parse(
        [
            "upload",
            "hf_hub",
            "-r",
            "org/bad",
            "-m",
            str(full_model),
            "--hub-gateway",
            gateway_address,
        ]
    )
    assert upload.run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model_path: full_model artifact is missing: config.json")
    assert "Traceback" not in "\n".join(err)
    assert (
        upload.run(
            parse(
                [
                    "upload",
                    "hf_hub",
                    "-r",
                    "not-a-repo-id",
                    "-m",
                    str(full_model),
                    "--hub-gateway",
                    gateway_address,
                ]
            )
        )
        == 2
    )


@pytest.mark.slow
def test_cli_entry_point_dry_run(hub, adapter_model, tmp_path):
    env = {
        **os.environ,
        "HF_TOKEN": TOKEN,
        "HF_HUB_DISABLE_XET": "1",
        "TUNEWIRE_DATA_DIR": str(tmp_path / "state"),
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "clients" / "cli.py"),
            "upload",
            "hf_hub",
            "--repo-id",
            "org/entry",
            "--model-path",
            str(adapter_model),
            "--dry-run",
            "--endpoint",
            hub.endpoint,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "peft_adapter artifact" in proc.stdout and "library_name: peft" in proc.stdout
    assert hub.count("commits") == 0
