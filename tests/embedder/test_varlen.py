"""Padding-free (packed) batches: the same vectors as padded batches and as plain transformers."""

import numpy as np
import pytest
import torch

from services.embedder.batching import plan_batches
from services.embedder.encoder import Encoder
from services.embedder.service import EmbedderService, EncoderRegistry, EncoderSpec
from services.embedder.source import resolve
from services.embedder.varlen import pack
from tests.embedder.conftest import TEXTS, rel_error
from tunewire.pooling import pool, pool_packed


def _reference(path: str, texts: list[str], pooling: str, layer: int = 0) -> np.ndarray:
    """Plain transformers, its default attention, one padded batch, pooled by hand."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    hidden = out.last_hidden_state if layer == 0 else out.hidden_states[layer]
    mask = batch["attention_mask"]
    lengths = mask.sum(1)
    rows = torch.arange(len(texts))
    if pooling == "mean":
        m = mask.unsqueeze(-1).float()
        return ((hidden * m).sum(1) / m.sum(1)).numpy()
    if pooling == "cls":
        return hidden[:, 0].numpy()
    if pooling == "last":
        return hidden[rows, lengths - 1].numpy()
    filled = hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf"))
    return filled.max(1).values.numpy()


@pytest.fixture(scope="module")
def encoders(minilm_path, tiny_llama_path):
    cpu = torch.device("cpu")
    return {
        name: Encoder(resolve(path), cpu)
        for name, path in (("minilm", minilm_path), ("llama", tiny_llama_path))
    }


@pytest.mark.parametrize(
    "name, pooling, layer",
    [
        ("minilm", "mean", 0),
        ("minilm", "cls", 0),
        ("minilm", "max", 0),
        ("minilm", "mean", 3),
        ("llama", "mean", 0),
        ("llama", "last", 0),
        ("llama", "max", 1),
    ],
)
def test_packed_and_padded_match_plain_transformers_float32(
    encoders, minilm_path, tiny_llama_path, name, pooling, layer
):
    encoder = encoders[name]
    encoder.load()
    assert encoder.packed, "the probe should keep the packed path for BERT and Llama"
    path = minilm_path if name == "minilm" else tiny_llama_path
    expected = _reference(path, TEXTS, pooling, layer)
    ids = encoder.tokenize(TEXTS, encoder.max_length)
    for packed in (True, False):
        got = encoder.run(ids, pooling=pooling, layer=layer, normalize=False, packed=packed).numpy()
        assert rel_error(got, expected) < 1e-5, (packed, rel_error(got, expected))


def test_packed_batch_attends_within_each_text_only(encoders):
    """A text's vector is the same alone and packed with others (no cross-text attention)."""
    encoder = encoders["llama"]
    ids = encoder.tokenize(TEXTS, 64)
    together = encoder.run(ids, pooling="mean", layer=0, normalize=False, packed=True)
    for i, row in enumerate(ids):
        alone = encoder.run([row], pooling="mean", layer=0, normalize=False, packed=True)
        torch.testing.assert_close(together[i], alone[0], rtol=1e-5, atol=1e-6)


def test_varlen_off_pads_and_gives_the_same_vectors(minilm_path, tmp_path):
    from services.embedder.cache import EmbeddingCache

    registry = EncoderRegistry(max_loaded=1, device=torch.device("cpu"), varlen=False)
    service = EmbedderService(EmbeddingCache(tmp_path / "c"), registry=registry)
    try:
        padded = service.embed(EncoderSpec(model=minilm_path), TEXTS).vectors
        assert registry.get(minilm_path).encoder.packed is False
    finally:
        service.close()
    assert rel_error(padded, _reference(minilm_path, TEXTS, "mean")) < 1e-5


def test_pool_packed_equals_pool_on_the_padded_batch():
    torch.manual_seed(0)
    lengths = [3, 1, 7, 4]
    hidden = [torch.randn(n, 8) for n in lengths]
    width = max(lengths)
    padded = torch.zeros(len(lengths), width, 8)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, h in enumerate(hidden):
        padded[i, : len(h)] = h
        mask[i, : len(h)] = 1
    cu = pack([[0] * n for n in lengths]).cu_seq_lens
    for mode in ("mean", "cls", "last", "max", "sum"):
        for normalize in (False, True):
            torch.testing.assert_close(
                pool_packed(torch.cat(hidden), cu, mode, normalize),
                pool(padded, mask, mode, normalize),
            )


def test_pack_positions_restart_per_text():
    packed = pack([[5, 6, 7], [8], [9, 10]])
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert packed.cu_seq_lens.tolist() == [0, 3, 4, 6] and packed.max_length == 3


def test_packed_budget_counts_real_tokens():
    lengths = [100, 3, 50, 3, 2, 40]
    batches = plan_batches(lengths, max_batch_tokens=106, packed=True)
    assert sorted(i for b in batches for i in b.index) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b.index) <= 106 for b in batches)
    # Padded, 100 + 3 + 2 costs 3 x 100 tokens: three batches; packed they fit in one.
    assert len(plan_batches([100, 3, 2], 106)) == 2
    assert [b.index for b in plan_batches([100, 3, 2], 106, packed=True)] == [[0, 1, 2]]


@pytest.mark.parametrize("name", ["minilm", "llama"])
def test_packed_forward_never_reads_the_device_on_the_host(encoders, name, monkeypatch):
    """transformers' packed-sequence check and a `repeat_interleave` without its output size
    read the GPU on the host (each launch then waited for the batch before it); the packed path
    takes neither, and still gives the padded vectors."""
    import transformers.masking_utils as masking

    encoder = encoders[name]
    encoder.load()
    ids = encoder.tokenize(TEXTS, 64)
    padded = encoder.run(ids, pooling="mean", layer=0, normalize=False, packed=False)

    def refused(*args, **kwargs):
        raise AssertionError("the packed path asked transformers for its packed-sequence check")

    real = torch.repeat_interleave

    def sized(*args, **kwargs):
        assert kwargs.get("output_size") is not None, "repeat_interleave would read the device"
        return real(*args, **kwargs)

    monkeypatch.setattr(masking, "find_packed_sequence_indices", refused)
    monkeypatch.setattr(torch, "repeat_interleave", sized)
    for pooling in ("mean", "max"):
        packed = encoder.run(ids, pooling=pooling, layer=0, normalize=False, packed=True)
        assert packed.shape == (len(TEXTS), encoder.dimension)
    packed = encoder.run(ids, pooling="mean", layer=0, normalize=False, packed=True)
    torch.testing.assert_close(packed, padded, rtol=1e-4, atol=1e-5)
