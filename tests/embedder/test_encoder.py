"""Vectors against plain transformers, layers, truncation, decoder-only models, load errors."""

import numpy as np
import pytest
import torch

from services.embedder.service import EncoderSpec
from services.embedder.source import resolve
from tests.embedder.conftest import TEXTS
from tunewire.errors import InvalidArgument, NotFound


def _reference(
    path: str, texts: list[str], layer: int | None = None, max_length: int = 512
) -> np.ndarray:
    """Plain transformers: one padded batch, manual masked mean pooling."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    batch = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    hidden = out.last_hidden_state if layer is None else out.hidden_states[layer]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def _assert_rel_close(got: np.ndarray, expected: np.ndarray, rel: float) -> None:
    err = np.linalg.norm(got.astype(np.float64) - expected, axis=1)
    assert (err / np.linalg.norm(expected, axis=1)).max() < rel


def test_minilm_mean_matches_plain_transformers_float32(service, minilm_path):
    service.max_batch_tokens = 64  # several batches of different widths than the reference
    result = service.embed(EncoderSpec(model=minilm_path), TEXTS)
    assert service.batches >= 2
    expected = _reference(minilm_path, TEXTS)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (len(TEXTS), 384)
    _assert_rel_close(result.vectors, expected, 1e-5)
    np.testing.assert_allclose(result.vectors, expected, rtol=1e-4, atol=1e-5)


def test_minilm_float16_within_half_precision(service, minilm_path):
    result = service.embed(EncoderSpec(model=minilm_path, dtype="float16", normalize=True), TEXTS)
    assert result.vectors.dtype == np.float16
    expected = _reference(minilm_path, TEXTS)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(result.vectors.astype(np.float32), expected, rtol=0, atol=2e-3)


def test_hidden_layer_and_truncation(service, minilm_path):
    middle = service.embed(EncoderSpec(model=minilm_path, layer=3), TEXTS[:3]).vectors
    _assert_rel_close(middle, _reference(minilm_path, TEXTS[:3], layer=3), 1e-5)
    from_end = service.embed(EncoderSpec(model=minilm_path, layer=-4), TEXTS[:3]).vectors
    np.testing.assert_array_equal(from_end, middle)  # 7 hidden states: -4 is index 3
    short = service.embed(EncoderSpec(model=minilm_path, max_length=5), TEXTS[:3]).vectors
    _assert_rel_close(short, _reference(minilm_path, TEXTS[:3], max_length=5), 1e-5)
    with pytest.raises(InvalidArgument) as err:
        service.embed(EncoderSpec(model=minilm_path, layer=7), TEXTS[:1])
    assert err.value.field == "encoder.layer"


def test_instruction_prefix_is_embedded(service, minilm_path):
    prefix = "query: "
    got = service.embed(EncoderSpec(model=minilm_path, instruction=prefix), TEXTS[:2]).vectors
    _assert_rel_close(got, _reference(minilm_path, [prefix + t for t in TEXTS[:2]]), 1e-5)


def test_decoder_only_without_pad_token_last_pooling_is_batch_invariant(service, tiny_llama_path):
    spec = EncoderSpec(model=tiny_llama_path, pooling="last")
    info = service.info(spec)
    assert info.model_type == "llama" and info.dimension == 32 and info.max_length == 64
    together = service.embed(spec, TEXTS).vectors
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    for i, text in enumerate(TEXTS):  # one text at a time: no padding at all
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=64)
        with torch.no_grad():
            alone = model(**ids).last_hidden_state[0, -1].numpy()
        np.testing.assert_allclose(together[i], alone, rtol=1e-4, atol=1e-5)


def test_missing_local_path_is_not_found():
    with pytest.raises(NotFound) as err:
        resolve("/nonexistent/model/dir")
    assert err.value.field == "encoder.model" and "does not exist" in err.value.message


def test_directory_without_config_is_invalid(tmp_path):
    with pytest.raises(InvalidArgument) as err:
        resolve(str(tmp_path))
    assert err.value.field == "encoder.model" and "config.json" in err.value.message


def test_hub_id_not_cached_offline_is_not_found(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(NotFound) as err:
        resolve("tunewire-test/no-such-model")
    assert err.value.field == "encoder.model" and "offline" in err.value.message


def test_invalid_hub_id_is_invalid_argument(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InvalidArgument) as err:
        resolve("not a valid id!")
    assert err.value.field == "encoder.model"


def test_hub_snapshot_in_cache_resolves_to_its_commit(monkeypatch, tmp_path, minilm_path):
    """A Hub id present in the HF cache works offline; its fingerprint uses the commit."""
    import shutil

    from huggingface_hub import constants

    from services.embedder.fingerprint import weights_identity

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--tunewire-test--minilm"
    shutil.copytree(
        minilm_path,
        repo / "snapshots" / commit,
        ignore=shutil.ignore_patterns("1_Pooling", "README.md"),
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    source = resolve("tunewire-test/minilm")
    assert source.commit == commit and source.hub_id == "tunewire-test/minilm"
    assert weights_identity(source) == f"hub:tunewire-test/minilm@{commit}"


def test_revision_with_a_local_directory_is_rejected(minilm_path):
    with pytest.raises(InvalidArgument) as err:
        resolve(minilm_path, revision="main")
    assert err.value.field == "encoder.revision"


def test_corrupt_weights_fail_at_get_encoder_info(service, minilm_path, tmp_path):
    import shutil

    from tunewire.errors import FailedPrecondition

    broken = tmp_path / "broken"
    shutil.copytree(minilm_path, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FailedPrecondition) as err:
        service.info(EncoderSpec(model=str(broken)))
    assert err.value.field == "encoder.model" and "cannot load the weights" in err.value.message


def test_empty_text_works_on_a_tokenizer_without_special_tokens(service, tiny_llama_path):
    spec = EncoderSpec(model=tiny_llama_path, pooling="mean")
    result = service.embed(spec, ["", "not empty"])
    assert result.vectors.shape == (2, 32) and np.isfinite(result.vectors).all()
    assert not np.array_equal(result.vectors[0], result.vectors[1])


def test_info_loads_the_weights_once_per_content_in_a_cache(tmp_path, minilm_path, monkeypatch):
    """A warm job needs no weights: files of a content that loaded once are only described."""
    import shutil

    from services.embedder import service as service_module
    from services.embedder.cache import EmbeddingCache
    from services.embedder.service import EmbedderService, EncoderRegistry
    from tunewire.errors import FailedPrecondition

    monkeypatch.setattr(service_module, "SIGNATURE_CHECK_SECONDS", 0.0)
    model = tmp_path / "model"
    shutil.copytree(minilm_path, model)
    first = EmbedderService(EmbeddingCache(tmp_path / "c"), registry=EncoderRegistry())
    try:
        described = first.info(EncoderSpec(model=str(model)))
        assert first.registry.get(str(model)).encoder.loaded
    finally:
        first.close()
    again = EmbedderService(EmbeddingCache(tmp_path / "c"), registry=EncoderRegistry())
    try:
        assert again.info(EncoderSpec(model=str(model))) == described
        assert not again.registry.get(str(model)).encoder.loaded
        (model / "model.safetensors").write_bytes(b"not weights")  # new content: loaded, fails
        with pytest.raises(FailedPrecondition, match="cannot load the weights"):
            again.info(EncoderSpec(model=str(model)))
    finally:
        again.close()
