"""Tokenising on a pool of threads, each with its own copy of the tokenizer.

A fast (Rust) tokenizer cannot be shared between threads: transformers sets its truncation on
every call, and doing so while another thread encodes raises "Already borrowed". Behind one lock,
every request's tokenising was serial, and a stream's first batch waited for the whole of its
first request. Here a request's texts are cut into chunks that a pool of threads tokenises in
parallel, each thread with a private copy made once (the encoding itself releases the GIL), and
`submit` hands back the chunks' futures in order, so the caller can queue the first chunks for the
model while later ones are still being tokenised (service.py). A request of a few texts (an online
prediction's) is tokenised in the calling thread on one more copy, when no other request is using
it: handing it to the pool and back cost two thread wake-ups, milliseconds on a busy host, for
0.1 ms of encoding.

Texts are cut to a prefix of characters before the tokenizer sees them (tunewire/truncation.py:
a fast tokenizer encodes all of its input before truncating, ~50 bytes a character).
"""

from __future__ import annotations

import copy
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from tunewire.truncation import truncated_ids

# Texts per chunk: small enough that a batch's worth of tokens arrives early, large enough that
# the per-call overhead (truncation set-up, a future) stays small next to the encoding.
CHUNK_TEXTS = 64
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
# Requests of at most this many texts are tokenised in the calling thread (module docstring).
INLINE_TEXTS = 8


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
        self._inline_lock = threading.Lock()  # guards the copy small requests use inline
        self._inline = None

    def submit(
        self, texts: list[str], max_length: int, instruction: str = ""
    ) -> list[Future[list[list[int]]]]:
        """One future per chunk of `texts`, in order; each gives that chunk's token ids."""
        if len(texts) <= INLINE_TEXTS and self._inline_lock.acquire(blocking=False):
            try:
                return [self._encode_inline(texts, max_length, instruction)]
            finally:
                self._inline_lock.release()
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

    def _encode_inline(self, texts: list[str], max_length: int, instruction: str) -> Future:
        """`texts` tokenised now on the inline copy (the caller holds its lock), as a future
        like the pool's, so the caller treats both alike."""
        if self._inline is None:
            self._inline = copy.deepcopy(self._tokenizer)
        done: Future[list[list[int]]] = Future()
        try:
            done.set_result(_encode(self._inline, texts, max_length, instruction))
        except Exception as exc:  # noqa: BLE001 - delivered through the future, as the pool does
            done.set_exception(exc)
        return done

    def _encode(self, texts: list[str], max_length: int, instruction: str) -> list[list[int]]:
        return _encode(self._own(), texts, max_length, instruction)


def _encode(tokenizer, texts: list[str], max_length: int, instruction: str) -> list[list[int]]:
    rows = truncated_ids(tokenizer, texts, max_length, instruction)
    # A tokenizer that adds no special tokens gives [] for "": a zero-length row cannot go
    # through a model, so it becomes one eos (or pad) token.
    filler = [
        int(
            tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
        )
    ]
    return [ids or filler for ids in rows]
