"""Long texts end to end: the SDK cuts a stream's messages by bytes as well as by count, so 70
texts of about 1 MiB each (70 MiB, past the 64 MiB message limit) embed; was gRPC's raw "Sent
message larger than max"."""

from __future__ import annotations

import numpy as np

from clients.sdk import EmbedderClient, EncoderSpec
from tests.embedder.conftest import WORDS, served
from tunewire.wire import text_batches


def test_text_batches_are_cut_by_count_and_by_bytes():
    texts = ["a" * 10, "é" * 10, "b", "c" * 50, "d"]
    assert list(text_batches(texts, 2, 10**6)) == [(0, 2), (2, 4), (4, 5)]
    # 16 + 26 bytes (UTF-8 and framing) fit in 45; a text over the limit goes alone
    assert list(text_batches(texts, 10, 45)) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert list(text_batches([], 3, 10)) == []


def test_text_batches_sized_in_c_cut_where_a_text_by_text_count_would():
    """A window whose characters fit at 4 bytes each is taken whole without a step per text;
    the rest is sized text by text: the same cuts either way, multi-byte texts included."""

    def by_text(texts, max_texts, max_bytes):
        start, size = 0, 0
        for i, text in enumerate(texts):
            length = len(text.encode("utf-8", "replace")) + 6
            if i > start and (i - start >= max_texts or size + length > max_bytes):
                yield start, i
                start, size = i, 0
            size += length
        if start < len(texts):
            yield start, len(texts)

    rng = np.random.default_rng(0)
    alphabet = ["a", "b", "\u00e9", "\U0001f600", "\ud800"]
    for _ in range(500):
        texts = [
            "".join(rng.choice(alphabet, size=rng.integers(0, 12)).tolist())
            for _ in range(rng.integers(0, 30))
        ]
        max_texts, max_bytes = int(rng.integers(1, 9)), int(rng.integers(1, 120))
        assert list(text_batches(texts, max_texts, max_bytes)) == list(
            by_text(texts, max_texts, max_bytes)
        )


def test_seventy_megabyte_texts_embed_over_one_stream(tmp_path, registry, minilm_path):
    line = " ".join(WORDS)
    texts = [f"{i} " + line * (1_000_000 // len(line)) for i in range(70)]
    assert sum(map(len, texts)) > 64 << 20
    with served(tmp_path / "c", registry) as (service, address):
        client = EmbedderClient(address)
        try:
            spec = EncoderSpec(minilm_path, max_length=16)
            result = client.embed_many(texts, spec)
            assert result.vectors.shape == (70, 384) and result.cache_misses == 70
            one = client.embed(texts[:1], spec).vectors
            assert np.allclose(one[0], result.vectors[0], atol=1e-5)
        finally:
            client.close()
