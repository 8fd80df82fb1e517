"""Tokenising on several threads: the tokenizer's own ids, in order, from any number of threads."""

from concurrent.futures import ThreadPoolExecutor

from transformers import AutoTokenizer

from services.embedder.tokenizing import ParallelTokenizer
from tests.embedder.conftest import TEXTS


def test_chunks_give_the_tokenizers_ids_in_order(minilm_path):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    texts = [f"{i}: {text}" for i, text in enumerate(TEXTS * 30)]
    parallel = ParallelTokenizer(tokenizer, workers=3, chunk_texts=16)
    chunks = parallel.submit(texts, 12, "query: ")
    assert len(chunks) == -(-len(texts) // 16)
    expected = tokenizer(["query: " + t for t in texts], truncation=True, max_length=12)
    assert [ids for chunk in chunks for ids in chunk.result()] == expected["input_ids"]


def test_concurrent_callers_with_different_truncation_never_collide(minilm_path):
    """A shared Rust tokenizer raises "Already borrowed" here: each call sets its truncation."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    parallel = ParallelTokenizer(tokenizer, workers=4, chunk_texts=8)
    texts = TEXTS * 40
    lengths = [6, 9, 12, 64, 7, 128]
    # The expected ids come from the shared tokenizer on this thread alone, before any other runs.
    expected = {n: tokenizer(texts, truncation=True, max_length=n)["input_ids"] for n in lengths}

    def run(max_length: int) -> bool:
        return parallel(texts, max_length) == expected[max_length]

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(run, lengths * 3))
