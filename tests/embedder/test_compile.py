"""Compiled blocks (torch.compile per block, symbolic token counts): eager's vectors, one graph
for every packed batch shape, and eager again when compiling fails.

The tiny Llama goes through the same operator boundary as a GPU run (`tunewire::varlen_attention`
is opaque to the compiler on every device), so what traces here traces there; only the kernel
inside the operator differs. Compiling it takes some 15 s of a busy CPU, once per module."""

import pytest
import torch
import torch._dynamo.utils

from services.embedder import encoder as encoder_module
from services.embedder.encoder import Encoder
from services.embedder.source import resolve
from tests.embedder.conftest import TEXTS, rel_error
from tunewire.block_compile import transformer_blocks


@pytest.fixture(scope="module")
def pair(tiny_llama_path):
    cpu = torch.device("cpu")
    eager, compiled = (Encoder(resolve(tiny_llama_path), cpu, compile=c) for c in (False, True))
    eager.load()
    compiled.load()
    return eager, compiled


def test_compiled_blocks_give_the_eager_vectors_float32(pair):
    eager, compiled = pair
    assert compiled.compiled and compiled.packed and compiled.compile_seconds > 0
    assert not eager.compiled
    ids = compiled.tokenize(TEXTS, compiled.max_length)
    for pooling, layer in (("mean", 0), ("last", 0), ("max", 1)):
        for packed in (True, False):
            kwargs = dict(pooling=pooling, layer=layer, normalize=False, packed=packed)
            assert rel_error(compiled.run(ids, **kwargs), eager.run(ids, **kwargs)) < 1e-4


def test_packed_batches_of_any_size_reuse_one_graph(pair):
    _, compiled = pair
    assert compiled.compiled  # not an eager fallback, which would reuse no graph either
    ids = compiled.tokenize(TEXTS * 3, compiled.max_length)
    compiled.run(ids[:2], pooling="mean", layer=0, normalize=False)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for n in (1, 3, 7, 18):  # other token and text counts, other longest texts
        compiled.run(ids[:n], pooling="mean", layer=0, normalize=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_a_failing_compile_falls_back_to_eager(tiny_llama_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    def compile_broken(model, *, dynamic=None, eager_rounding=False):
        blocks = transformer_blocks(model)
        for block in blocks:
            block._compiled_call_impl = broken
        return blocks

    monkeypatch.setattr(encoder_module, "compile_blocks", compile_broken)
    encoder = Encoder(resolve(tiny_llama_path), torch.device("cpu"), compile=True)
    encoder.load()
    assert not encoder.compiled
    vectors = encoder.run(encoder.tokenize(TEXTS, 32), pooling="mean", layer=0, normalize=False)
    assert vectors.shape == (len(TEXTS), encoder.dimension)


def test_bf16_blocks_compiled_with_eager_rounding_stay_on_the_eager_vectors():
    """Inductor keeps fused bf16 intermediates in fp32 unless told to round where eager does;
    over 8 random layers that alone drifts ~4e-3 from eager bf16. With eager rounding the
    compiled blocks stay within reduction-order noise (~6e-4 here)."""
    from transformers import LlamaConfig, LlamaModel

    from tunewire.block_compile import compile_blocks, uncompile_blocks

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=8,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaModel(config).to(torch.bfloat16).eval()
    ids = torch.randint(0, 300, (4, 64))

    def pooled() -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=ids).last_hidden_state.float().mean(1)

    eager = pooled()
    blocks = compile_blocks(model, eager_rounding=True)
    try:
        assert rel_error(pooled(), eager) < 1.5e-3
    finally:
        uncompile_blocks(blocks)
        torch._dynamo.reset()  # its graphs count toward later tests' recompile limit otherwise
