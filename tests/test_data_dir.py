"""One default state directory for every command and service: `./.tunewire`, or
`$TUNEWIRE_DATA_DIR`, or the `--data-dir` flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.embedder.__main__ import build_parser as embedder_parser
from services.hub_gateway.__main__ import build_parser as gateway_parser
from services.trainer.__main__ import build_parser as trainer_parser
from tunewire.paths import default_data_dir

PARSERS = [embedder_parser, trainer_parser, gateway_parser]


@pytest.mark.parametrize("build", PARSERS)
def test_every_service_defaults_to_dot_tunewire(build, monkeypatch):
    monkeypatch.delenv("TUNEWIRE_DATA_DIR", raising=False)
    assert build().parse_args([]).data_dir == Path(".tunewire") == default_data_dir()


@pytest.mark.parametrize("build", PARSERS)
def test_the_environment_and_the_flag_move_it(build, monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEWIRE_DATA_DIR", str(tmp_path / "env"))
    assert build().parse_args([]).data_dir == tmp_path / "env" == default_data_dir()
    flagged = build().parse_args(["--data-dir", str(tmp_path / "flag")])
    assert flagged.data_dir == tmp_path / "flag"


def test_dot_tunewire_is_git_ignored():
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
    assert "/.tunewire/" in ignored
