"""CUDA graphs per shape bucket for packed batches: one replay per batch instead of a launch per
kernel.

A CUDA graph replays fixed shapes from fixed addresses, while every packed batch has its own
token count, text count and longest text. So a batch is padded up to a bucket: its token count
to a multiple of an eighth of the power of two below it (at most 12.5 % more tokens, about 1 %
for a batch filled to a power-of-two budget), its text count and its longest text to powers of
two (the longest text at least 512). The extra
tokens are pad tokens in texts of their own (no longer than the longest real text, positions from
0), so they never enter a real text's attention, and the extra texts are empty (the varlen flash
kernel skips texts of length 0). One graph is captured per bucket the first time a batch needs it
(after one eager run, which also compiles any new shape), into one memory pool shared by every
bucket's graph: batches run one at a time in stream order and each output is pooled before the
next replay, so the graphs never need their memory at once.

Only the model's forward is in the graph; pooling runs after it on the real tokens, as in the
plain packed path. Vectors differ from that path only as two batch sizes' GEMMs may (cuBLAS picks
kernels by shape), which the encoder checks at load.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
import torch

from services.embedder.varlen import Packed

log = structlog.get_logger(__name__)

_MIN_TOKENS = 256
_MIN_TEXTS = 8
# The longest-text bucket starts here: the varlen kernel's cost hardly depends on it (blocks
# past a text's end return at once), while each bucket fewer is a graph fewer to capture.
_MIN_LENGTH = 512


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def bucket_tokens(n: int) -> int:
    """`n` rounded up to a multiple of an eighth of the power of two at or below it (>= 256)."""
    if n <= _MIN_TOKENS:
        return _MIN_TOKENS
    step = (1 << (n.bit_length() - 1)) // 8
    return -(-n // step) * step


@dataclass(frozen=True)
class Bucket:
    tokens: int
    texts: int
    max_length: int


def bucket_for(lengths: list[int]) -> Bucket:
    """The bucket of a batch of texts of `lengths` tokens (each >= 1)."""
    tokens = bucket_tokens(sum(lengths))
    longest = max(_MIN_LENGTH, _pow2(max(lengths)))
    pad = tokens - sum(lengths)
    texts = len(lengths) + -(-pad // longest)
    return Bucket(tokens, max(_MIN_TEXTS, _pow2(texts)), longest)


def padded_inputs(packed: Packed, bucket: Bucket, pad_id: int) -> Packed:
    """`packed` (CPU) padded to `bucket`: pad texts after the real ones, then empty texts."""
    real = packed.input_ids.shape[1]
    n = packed.cu_seq_lens.shape[0] - 1
    pad = bucket.tokens - real
    ids = torch.full((1, bucket.tokens), pad_id, dtype=packed.input_ids.dtype)
    ids[:, :real] = packed.input_ids
    positions = torch.empty((1, bucket.tokens), dtype=packed.position_ids.dtype)
    positions[:, :real] = packed.position_ids
    pad_positions = torch.arange(pad, dtype=positions.dtype) % bucket.max_length
    positions[0, real:] = pad_positions
    pad_starts = torch.arange(real, bucket.tokens, bucket.max_length, dtype=torch.int32)
    cu = torch.full((bucket.texts + 1,), bucket.tokens, dtype=torch.int32)
    cu[: n + 1] = packed.cu_seq_lens
    cu[n + 1 : n + 1 + len(pad_starts) - 1] = pad_starts[1:]
    return Packed(ids, positions, cu, bucket.max_length)


class _Graph:
    """One bucket's captured forward: static inputs in, static hidden states out."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: Packed, hidden: torch.Tensor):
        self.graph, self.inputs, self.hidden = graph, inputs, hidden


class GraphedForward:
    """Packed forwards through CUDA graphs per bucket, for one model on one GPU. Callers
    serialise calls (the encoder's lock) and consume each output before the next call."""

    def __init__(self, forward, pad_id: int, device: torch.device) -> None:
        """`forward(packed) -> hidden [1, tokens, dim]` runs the model on device inputs."""
        self._forward = forward
        self._pad_id = pad_id
        self._device = device
        self._graphs: dict[Bucket, _Graph] = {}
        self._pool = None

    @property
    def buckets(self) -> int:
        return len(self._graphs)

    def __call__(self, packed: Packed) -> torch.Tensor:
        """Hidden states [real tokens, dim] of `packed` (CPU, pinned), through its bucket's
        graph (captured now if it is the first batch of the bucket)."""
        lengths = (packed.cu_seq_lens[1:] - packed.cu_seq_lens[:-1]).tolist()
        bucket = bucket_for(lengths)
        host = padded_inputs(packed, bucket, self._pad_id)
        graph = self._graphs.get(bucket)
        if graph is None:
            graph = self._capture(bucket, host)
            self._graphs[bucket] = graph
        for static, new in zip(
            (graph.inputs.input_ids, graph.inputs.position_ids, graph.inputs.cu_seq_lens),
            (host.input_ids, host.position_ids, host.cu_seq_lens),
        ):
            static.copy_(new.pin_memory(), non_blocking=True)
        graph.graph.replay()
        return graph.hidden[0, : packed.input_ids.shape[1]]

    def _capture(self, bucket: Bucket, host: Packed) -> _Graph:
        inputs = host.to(self._device)
        stream = torch.cuda.Stream(self._device)
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream):
            self._forward(inputs)  # compiles a new shape, probes kernels: never in a capture
        torch.cuda.current_stream(self._device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: other request threads waiting on their batches' events meanwhile
        # must not invalidate this capture.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            hidden = self._forward(inputs)
        log.info(
            "captured a CUDA graph",
            tokens=bucket.tokens,
            texts=bucket.texts,
            max_length=bucket.max_length,
            graphs=len(self._graphs) + 1,
        )
        return _Graph(graph, inputs, hidden)
