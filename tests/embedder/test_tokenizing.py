"""Tokenising on several threads: the tokenizer's own ids, in order, from any number of threads."""

from concurrent.futures import ThreadPoolExecutor

from transformers import AutoTokenizer

from services.embedder.tokenizing import ParallelTokenizer
from tests.embedder.conftest import TEXTS, WORDS


def test_chunks_give_the_tokenizers_ids_in_order(minilm_path):
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    texts = [f"{i}: {text}" for i, text in enumerate(TEXTS * 30)]
    parallel = ParallelTokenizer(tokenizer, workers=3, chunk_texts=16)
    chunks = parallel.submit(texts, 12, "query: ")
    assert len(chunks) == 1 + -(-(len(texts) - 8) // 16)  # 8 texts, then 16 a chunk
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


class _Spy:
    """A tokenizer that records the longest input it was given (shared by its thread copies)."""

    def __init__(self, tokenizer, longest: list[int]) -> None:
        self._tokenizer, self.longest = tokenizer, longest

    def __deepcopy__(self, memo):
        import copy

        return _Spy(copy.deepcopy(self._tokenizer, memo), self.longest)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, inputs, **kwargs):
        self.longest.append(max(map(len, inputs)))
        return self._tokenizer(inputs, **kwargs)


def test_long_texts_are_cut_before_tokenising_and_give_the_whole_texts_ids(minilm_path):
    """The tokenizer sees a bounded prefix of a 1 MB text, never the text (it encodes all of
    its input before truncating, at ~50 bytes a character); the ids are those of the whole."""
    from tunewire.truncation import first_chars

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    long_words = " ".join(WORDS * 6000)  # ~330k characters of words
    texts = [long_words, "字" * 200_000, "short text", "x" * 300 + " end"]
    longest: list[int] = []
    parallel = ParallelTokenizer(_Spy(tokenizer, longest), workers=2, chunk_texts=2)
    got = parallel(texts, 64, "query: ")
    expected = tokenizer(["query: " + t for t in texts], truncation=True, max_length=64)
    assert got == expected["input_ids"]
    assert len(got[0]) == 64 and len(got[1]) == 64
    assert max(longest) <= first_chars(64)


def test_a_prefix_that_fills_too_few_tokens_is_tokenised_again_longer(minilm_path):
    """Characters the tokenizer drops (whitespace, control characters) do not make a text
    shorter than it is: its ids are still the whole text's, from prefixes grown one at a time."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    spaced = " " * 20_000 + " ".join(WORDS * 200)
    controls = "\x00\x01" * 5_000 + " ".join(WORDS * 200)
    longest: list[int] = []
    parallel = ParallelTokenizer(_Spy(tokenizer, longest), workers=1)
    got = parallel([spaced, controls], 32)
    assert got == tokenizer([spaced, controls], truncation=True, max_length=32)["input_ids"]
    assert len(got[0]) == 32 and len(got[1]) == 32
    assert max(longest) < len(spaced)  # grown until full, not to the whole text


def test_a_few_texts_are_tokenised_inline_as_the_pool_would(minilm_path):
    """A small request is tokenised in the calling thread (no hand-off); while another caller
    holds the inline copy, it goes to the pool; the ids are the same either way."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    parallel = ParallelTokenizer(tokenizer, workers=2)
    texts = TEXTS[:3]
    expected = tokenizer(texts, truncation=True, max_length=8)["input_ids"]
    inline = parallel.submit(texts, 8)
    assert len(inline) == 1 and inline[0].done() and inline[0].result() == expected
    with parallel._inline_lock:  # another request is using the inline copy
        pooled = parallel.submit(texts, 8)
        assert pooled[0].result() == expected


def test_a_requests_chunks_ramp_up_from_a_few_texts(minilm_path):
    """An idle GPU starts on a request's first few texts: chunks of 8, 16, 32, then 64."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    texts = [f"{i}: {text}" for i, text in enumerate(TEXTS * 60)][:300]
    parallel = ParallelTokenizer(tokenizer, workers=2)
    chunks = [chunk.result() for chunk in parallel.submit(texts, 16)]
    assert [len(chunk) for chunk in chunks] == [8, 16, 32, 64, 64, 64, 52]
    expected = tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    assert [ids for chunk in chunks for ids in chunk] == expected
    parallel.ramp = False  # as before: every chunk full
    assert [len(c.result()) for c in parallel.submit(texts, 16)] == [64, 64, 64, 64, 44]


def test_warm_copies_the_tokenizer_for_every_thread_before_any_request(minilm_path):
    """Copies made by `warm` are taken by the threads' first chunks: no request waits for a
    deep copy (and each thread still has a copy of its own: ids as the tokenizer's)."""
    copies: list[int] = []

    class Counted:
        def __init__(self, tokenizer) -> None:
            self._tokenizer = tokenizer

        def __deepcopy__(self, memo):
            import copy

            copies.append(1)
            return Counted(copy.deepcopy(self._tokenizer, memo))

        def __getattr__(self, name):
            return getattr(self._tokenizer, name)

        def __call__(self, inputs, **kwargs):
            return self._tokenizer(inputs, **kwargs)

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    parallel = ParallelTokenizer(Counted(tokenizer), workers=3)
    parallel.warm()
    assert len(copies) == 4  # one a thread, one for small requests tokenised inline
    parallel.warm()  # nothing more to make
    assert len(copies) == 4
    texts = TEXTS * 40
    assert parallel(texts, 10) == tokenizer(texts, truncation=True, max_length=10)["input_ids"]
    assert (
        parallel(texts[:2], 10) == tokenizer(texts[:2], truncation=True, max_length=10)["input_ids"]
    )
    assert len(copies) == 4  # the requests' chunks made none
