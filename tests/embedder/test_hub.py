"""Hub ids resolved through HF_ENDPOINT (a Hub-compatible server on loopback) with HF_TOKEN."""

import numpy as np
import pytest
import torch

from services.embedder.service import EmbedderService, EncoderRegistry, EncoderSpec
from tests.embedder.conftest import TEXTS
from tests.hubserver import TestHub
from tunewire.errors import NotFound

TOKEN = "hf_embedder_test"
REPO = "user/tiny-llama"


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_llama_path):
    """A private repo holding the tiny Llama; the client environment points at it."""
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = TestHub(tmp_path / "hub", tokens={TOKEN})
    api = HfApi(endpoint=server.endpoint, token=TOKEN)
    api.create_repo(REPO, private=True)
    commit = api.upload_folder(folder_path=tiny_llama_path, repo_id=REPO).oid
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    return server, commit


@pytest.fixture
def service(cache):
    """Its own registry: Hub snapshots live in this test's tmp cache, not the session's."""
    return EmbedderService(cache, registry=EncoderRegistry(device=torch.device("cpu")))


def test_private_hub_model_needs_hf_token_then_matches_the_local_copy(
    hub, monkeypatch, service, tiny_llama_path
):
    _, commit = hub
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(NotFound) as err:
        service.embed(EncoderSpec(model=REPO), TEXTS[:2])
    assert err.value.field == "encoder.model" and "HF_TOKEN" in err.value.message

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    info = service.info(EncoderSpec(model=REPO))
    assert info.model_type == "llama"
    entry = service.registry.get(REPO)
    assert entry.encoder.source.commit == commit and entry.weights == f"hub:{REPO}@{commit}"
    from_hub = service.embed(EncoderSpec(model=REPO, pooling="last"), TEXTS[:3])
    local = service.embed(EncoderSpec(model=tiny_llama_path, pooling="last"), TEXTS[:3])
    np.testing.assert_array_equal(from_hub.vectors, local.vectors)
    assert from_hub.fingerprint != local.fingerprint  # identity is the commit, not the path


def test_unknown_revision_is_not_found_on_the_revision_field(hub, monkeypatch, service):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(NotFound) as err:
        service.embed(EncoderSpec(model=REPO, revision="no-such-branch"), ["x"])
    assert err.value.field == "encoder.revision"
