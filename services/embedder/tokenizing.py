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

A request's chunks ramp up: the first holds `FIRST_CHUNK_TEXTS` texts, each next one twice the
one before, up to `chunk_texts`. An idle GPU so starts on the first few texts (a 64-text chunk
of 260-token texts is ~100 ms of one thread's tokenising: the device waited that long at the
start of every stream) while the rest are tokenised.

The threads' copies of the tokenizer can be made ahead (`warm`, at an encoder's load on a GPU):
made by each thread on its first chunk, a fresh server's first stream paid for them, one deep
copy (~30-70 ms, holding the GIL for much of it) per thread, before its first batch.

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
# A request's first chunk; the next ones double up to CHUNK_TEXTS (module docstring).
FIRST_CHUNK_TEXTS = 8
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
        self._workers = workers
        # False: every chunk holds `chunk_texts` texts, as until 2026-12-03 (kept so that
        # bench/embedder_throughput.py measures both in one run).
        self.ramp = True
        self._local = threading.local()
        self._spares_lock = threading.Lock()
        self._spares: list = []  # copies made ahead (`warm`), taken by threads' first chunks
        self._taken = 0  # copies the threads hold
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
            self._pool.submit(self._encode, texts[start:end], max_length, instruction)
            for start, end in self._chunk_bounds(len(texts))
        ]

    def _chunk_bounds(self, n: int) -> list[tuple[int, int]]:
        """(start, end) of each chunk of `n` texts: ramping up from FIRST_CHUNK_TEXTS."""
        size = min(FIRST_CHUNK_TEXTS, self._chunk_texts) if self.ramp else self._chunk_texts
        bounds = []
        start = 0
        while start < n:
            bounds.append((start, min(start + size, n)))
            start += size
            size = min(size * 2, self._chunk_texts)
        return bounds

    def warm(self) -> None:
        """Make every worker thread's copy of the tokenizer now, and the one small requests
        use inline, so that no request waits for one (module docstring)."""
        with self._spares_lock:
            missing = self._workers - self._taken - len(self._spares)
        copies = [copy.deepcopy(self._tokenizer) for _ in range(missing)]
        with self._spares_lock:
            self._spares.extend(copies)
        with self._inline_lock:  # the copy small requests use (`_encode_inline`)
            if self._inline is None:
                self._inline = copy.deepcopy(self._tokenizer)

    def drop_spares(self) -> None:
        """Forget the copies made ahead: threads make their own again, as until 2026-12-03
        (bench/embedder_throughput.py's rows "as before")."""
        with self._spares_lock:
            self._spares.clear()

    def __call__(self, texts: list[str], max_length: int, instruction: str = "") -> list[list[int]]:
        return [
            ids for chunk in self.submit(texts, max_length, instruction) for ids in chunk.result()
        ]

    def _own(self):
        """This thread's copy of the tokenizer."""
        tokenizer = getattr(self._local, "tokenizer", None)
        if tokenizer is None:
            with self._spares_lock:
                spare = self._spares.pop() if self._spares else None
                self._taken += 1
            tokenizer = spare if spare is not None else copy.deepcopy(self._tokenizer)
            self._local.tokenizer = tokenizer
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
