"""`hf://datasets/...` data sets read on the client with the user's own token, against the
loopback Hub: the bytes the trainer stores are the repo's bytes, offline reads use the cache."""

from __future__ import annotations

import pandas as pd
import pytest

from clients import hf_data
from tests.hubserver import TestHub, allow_test_hub
from tunewire.errors import InvalidArgument, NotFound, Unavailable

TOKEN = "hf_data_reader"
CSV = b"text,label\nhello,1\nbye,0\nhi,1\n"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, constants

    allow_test_hub(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    server = TestHub(tmp_path / "hub", tokens={TOKEN})
    api = HfApi(endpoint=server.endpoint, token=TOKEN)
    api.create_repo("org/sms", repo_type="dataset", private=True)
    api.upload_file(
        path_or_fileobj=CSV, path_in_repo="data/train.csv", repo_id="org/sms", repo_type="dataset"
    )
    api.create_repo("org/two", repo_type="dataset")
    for name in ("train.csv", "test.csv"):
        api.upload_file(
            path_or_fileobj=CSV, path_in_repo=name, repo_id="org/two", repo_type="dataset"
        )
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.close()


def test_private_data_set_needs_the_users_token_then_reads_the_repo_bytes(hub, monkeypatch):
    with pytest.raises(NotFound) as err:
        hf_data.fetch("hf://datasets/org/sms/data/train.csv")
    assert "HF_TOKEN" in err.value.message and err.value.field == "dataset"
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert hf_data.fetch("hf://datasets/org/sms/data/train.csv").read_bytes() == CSV
    # Without a file name, the repo's one data file (found through HfFileSystem).
    assert hf_data.fetch("hf://datasets/org/sms").read_bytes() == CSV


def test_a_repo_with_several_files_must_name_one_and_missing_files_are_not_found(hub):
    with pytest.raises(InvalidArgument) as err:
        hf_data.fetch("hf://datasets/org/two")
    assert "hf://datasets/org/two/test.csv" in err.value.message
    with pytest.raises(NotFound):
        hf_data.fetch("hf://datasets/org/two/nope.csv")
    with pytest.raises(InvalidArgument):
        hf_data.fetch("hf://models/org/two")


def test_offline_reads_the_cached_copy_and_says_when_there_is_none(hub, monkeypatch):
    from huggingface_hub import constants

    first = hf_data.fetch("hf://datasets/org/two/train.csv")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.close()  # nothing to reach: the cache must answer
    assert hf_data.fetch("hf://datasets/org/two/train.csv").read_bytes() == first.read_bytes()
    with pytest.raises(Unavailable) as err:
        hf_data.fetch("hf://datasets/org/two/test.csv")
    assert "HF_HUB_OFFLINE" in err.value.message


def test_the_trainer_stores_the_hub_bytes_as_a_data_set(hub, monkeypatch, tmp_path):
    from clients.embedded import start_embedded
    from clients.sdk import TrainerClient

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with start_embedded(tmp_path / "state") as services:
        trainer = TrainerClient(services.trainer_address)
        try:
            ds = trainer.upload_dataset("hf://datasets/org/sms")
            as_tsv = trainer.upload_dataset("hf://datasets/org/sms", fmt="tsv")
        finally:
            trainer.close()
    assert (ds.filename, ds.rows, list(ds.columns)) == ("train.csv", 3, ["text", "label"])
    assert as_tsv.id != ds.id and list(as_tsv.columns) == ["text,label"]
    assert pd.read_csv(hf_data.fetch("hf://datasets/org/sms")).shape == (3, 2)


def test_the_cli_reads_a_hub_data_set_with_the_users_token(hub, monkeypatch, tmp_path, capsys):
    import yaml

    from clients.cli import main

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "auto.yaml"
    code = main(
        ["init_config", "--dataset", "hf://datasets/org/sms", "--target", "label", "-o", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    config = yaml.safe_load(out.read_text())
    assert config["output_features"] == [{"name": "label", "type": "binary"}]
    monkeypatch.delenv("HF_TOKEN")
    code = main(["init_config", "--dataset", "hf://datasets/org/private-nope", "--target", "x"])
    assert code == 2 and "HF_TOKEN" in capsys.readouterr().err
