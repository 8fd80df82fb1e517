"""Tokenising on a pool of threads, each with its own copy of the tokenizer.

A fast (Rust) tokenizer cannot be shared between threads: transformers sets its truncation on
every call, and doing so while another thread encodes raises "Already borrowed". Behind one lock,
every request's tokenising was serial, and a stream's first batch waited for the whole of its
first request. Here a request's texts are cut into chunks that a pool of threads tokenises in
parallel, each thread with a private copy made once (the encoding itself releases the GIL), and
`submit` hands back the chunks' futures in order, so the caller can queue the first chunks for the
model while later ones are still being tokenised (service.py).

Texts are cut to a prefix of characters before the tokenizer sees them. A fast tokenizer encodes
the whole input and truncates afterwards, at about 50 bytes of memory per character: 64 texts of
1 MiB took a gigabyte and more for 512 tokens of each. The prefix starts at `START_CHARS_PER_TOKEN`
characters per token of `max_length` (cut back to the last whitespace, so no word is split where
tokenizers split at whitespace), and the tokenizer then truncates exactly. A text whose prefix gave
fewer than `max_length` tokens although more text followed (characters the tokenizer drops, very
long tokens, a fused unknown run) is tokenised again with a prefix `GROWTH` times longer, alone,
until it fills `max_length` or is whole: the result is what tokenising the whole text gives, and the
memory is that of the characters actually needed, one long text at a time per thread.
"""

from __future__ import annotations

import copy
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

# Texts per chunk: small enough that a batch's worth of tokens arrives early, large enough that
# the per-call overhead (truncation set-up, a future) stays small next to the encoding.
CHUNK_TEXTS = 64
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
# Characters per token of the first prefix: above English's ~4.5 for BERT-style vocabularies.
START_CHARS_PER_TOKEN = 8
# Characters added to every prefix, for the special tokens and a cut at whitespace.
PREFIX_MARGIN_CHARS = 64
# How much longer each retried prefix is.
GROWTH = 4


def prefix(instruction: str, text: str, chars: int) -> str:
    """The first `chars` characters of `instruction + text` (never building the whole), cut back
    to the last whitespace in its second half when there is more text after it."""
    if len(instruction) >= chars:
        return instruction[:chars]
    rest = chars - len(instruction)
    if len(text) <= rest:
        return instruction + text
    head = text[:rest]
    cut = max(head.rfind(" ", rest // 2), head.rfind("\n", rest // 2))
    return instruction + (head[:cut] if cut > 0 else head)


def first_chars(max_length: int) -> int:
    """Characters of the first prefix for `max_length` tokens."""
    return max_length * START_CHARS_PER_TOKEN + PREFIX_MARGIN_CHARS


class ParallelTokenizer:
    """Token ids for texts (instruction prefixed, truncated, special tokens added), computed on
    `workers` threads. `tokenizer` is the caller's; it must not change once texts are submitted
    (the copies are taken from it lazily)."""

    def __init__(
        self, tokenizer, workers: int = DEFAULT_WORKERS, chunk_texts: int = CHUNK_TEXTS
    ) -> None:
        self._tokenizer = tokenizer
        self._chunk_texts = chunk_texts
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="tokenize")

    def submit(
        self, texts: list[str], max_length: int, instruction: str = ""
    ) -> list[Future[list[list[int]]]]:
        """One future per chunk of `texts`, in order; each gives that chunk's token ids."""
        return [
            self._pool.submit(
                self._encode, texts[i : i + self._chunk_texts], max_length, instruction
            )
            for i in range(0, len(texts), self._chunk_texts)
        ]

    def __call__(self, texts: list[str], max_length: int, instruction: str = "") -> list[list[int]]:
        return [
            ids for chunk in self.submit(texts, max_length, instruction) for ids in chunk.result()
        ]

    def _own(self):
        """This thread's copy of the tokenizer."""
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._local.tokenizer = copy.deepcopy(self._tokenizer)
        return tokenizer

    def _encode(self, texts: list[str], max_length: int, instruction: str) -> list[list[int]]:
        tokenizer = self._own()
        chars = first_chars(max_length)
        rows = self._ids(tokenizer, [prefix(instruction, t, chars) for t in texts], max_length)
        for i, text in enumerate(texts):
            if len(rows[i]) < max_length and len(instruction) + len(text) > chars:
                rows[i] = self._refill(tokenizer, instruction, text, max_length, chars)
        # A tokenizer that adds no special tokens gives [] for "": a zero-length row cannot go
        # through a model, so it becomes one eos (or pad) token.
        filler = [
            int(
                tokenizer.eos_token_id
                if tokenizer.eos_token_id is not None
                else tokenizer.pad_token_id
            )
        ]
        return [ids or filler for ids in rows]

    @staticmethod
    def _ids(tokenizer, inputs: list[str], max_length: int) -> list[list[int]]:
        encoded = tokenizer(
            inputs, truncation=True, max_length=max_length, padding=False, add_special_tokens=True
        )
        return [list(ids) for ids in encoded["input_ids"]]

    def _refill(
        self, tokenizer, instruction: str, text: str, max_length: int, chars: int
    ) -> list[int]:
        """A prefix of `chars` characters gave fewer than `max_length` tokens: longer prefixes,
        one at a time, until one fills `max_length` or holds the whole text."""
        whole = len(instruction) + len(text)
        while True:
            chars = min(chars * GROWTH, whole)
            ids = self._ids(tokenizer, [prefix(instruction, text, chars)], max_length)[0]
            if len(ids) >= max_length or chars >= whole:
                return ids
