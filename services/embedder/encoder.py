"""A frozen encoder: tokenizer + `transformers.AutoModel`, and how texts become pooled vectors.

Loading is split in two: `Encoder.open` reads only config and tokenizer (enough for the
fingerprint, so cache hits never wait for weights), and the weights load on the first batch.
Two ways through the model, same vectors within dtype tolerance:
- packed (padding-free, `varlen`): a batch's texts back to back in one row, attention kept within
  each text; used when the model class runs transformers' attention interface and a probe at
  load time gives the padded path's vectors;
- padded, always on the right: a causal model then never attends to a pad, and positions of real
  tokens do not shift, so a text's vector does not depend on the batch it was computed in (which a
  cache of vectors relies on). Pooling itself is also correct under left padding.

With `compile`, every block of the model is compiled (torch.compile per block, symbolic token
counts, tunewire/block_compile.py) when the weights load, on probe batches of three shapes, and
kept only if its vectors agree with the eager ones: compile time is paid at load (reported as
`compile_seconds`), not by the first requests, and a failure falls back to eager with a warning.

A batch is launched under the model lock and its vectors fetched after it (`Launched.result`): on a
GPU the forward pass runs asynchronously, so the next batch's host work (packing, pinned-memory
copies, launching the next forward) overlaps this one's compute. Nothing in a packed launch reads
the GPU on the host (varlen.model_inputs, pooling.pool_packed say how): one such read made every
launch wait for the batch before it, and the GPU idle while the next was packed and launched.
"""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import structlog
import torch

from services.embedder import varlen
from services.embedder.cpu_threads import PARALLEL_PASSES, forward_threads
from services.embedder.graphs import GraphedForward
from services.embedder.source import ModelSource
from services.embedder.tokenizing import ParallelTokenizer
from tunewire.block_compile import compile_blocks, uncompile_blocks
from tunewire.cpu_threads import intra_op_threads
from tunewire.devices import compute_dtype, default_device
from tunewire.errors import FailedPrecondition, InvalidArgument
from tunewire.model_init import building_modules
from tunewire.pooling import pool, pool_packed

log = structlog.get_logger(__name__)

_TRANSFORMERS = threading.Lock()


def _auto_classes():
    """transformers' AutoConfig, AutoModel and AutoTokenizer, imported when an encoder is first
    opened, not with this module: a process whose texts are all cached never needs them (the
    import was ~1 s of a warm job's CPU). Under a lock: transformers' lazy module is not safe to
    resolve from two threads at once (two models loading concurrently raised ImportError on
    AutoConfig)."""
    with _TRANSFORMERS:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

    return AutoConfig, AutoModel, AutoTokenizer


@dataclass(frozen=True)
class EncoderShape:
    """What the service asks of an encoder before any text needs it: its config's and its
    tokenizer's answers. Kept by the files' identities (service.EncoderShapes), so that an
    encoder opened before is described without opening its config and tokenizer."""

    model_type: str
    dimension: int
    num_layers: int
    max_length: int  # the model's own limit: the tokenizer's or the position table's, the lower


# Tokenizers without a real limit report a huge sentinel (int(1e30)); ignore it.
_NO_LIMIT = 1_000_000
# Batches a GPU holds launched at once (Encoder.launches).
GPU_BATCHES_IN_FLIGHT = 2
# Probe texts for the load-time check that the packed path gives the padded path's vectors, and
# the relative error allowed there (a wrong attention scope gives errors of order 1).
_PROBES = ["a short probe", "a somewhat longer probe text, so that the two rows differ in length"]
_PROBE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def _out_of_the_collectors_way() -> None:
    """Move every object alive now (torch, transformers, the model, its compiled blocks: some
    hundreds of thousands) out of the cyclic collector's way for good (gc.freeze), after one
    last collection (so no garbage is frozen with them). Each full collection walked them all
    again, with the GIL held - ~0.3 s on a 2-core VM - and while it did, the model's launcher
    could not launch: the GPU ran dry behind it. On a GPU only, where loading takes seconds
    anyway; the CLI's embedded mode freezes once its services have started (clients/embedded.py).
    """
    gc.collect()
    gc.freeze()


def froze_at_load(encoder: Encoder) -> bool:
    """Whether loading `encoder` froze the process's objects (`_out_of_the_collectors_way`)."""
    return encoder.device.type == "cuda" and encoder.loaded


def collect_dropped() -> None:
    """An encoder that `froze_at_load` was dropped (evicted, or reloaded after its files
    changed): frozen with everything else, what of it sits in reference cycles (its compiled
    blocks') would never be collected, nor the GPU memory it holds. Everything is unfrozen, so
    the collector frees it once its last users (a request finishing on it, its launcher's
    thread) let go; the next GPU load freezes again. Meanwhile full collections walk every
    object again, as they did before freezing."""
    gc.unfreeze()


def compile_by_default(device: torch.device) -> bool:
    """Compiled blocks on GPUs: there eager PyTorch runs each block's norms, rotary embedding and
    activations as separate memory-bound kernels between the GEMMs, and fusing them is what moves
    a 1B model past half the FLOP limit (bench/results/embedder_throughput_h200.md); the load-time
    check falls back to eager. Not on CPUs: compiling costs more seconds than it saves there."""
    return device.type == "cuda"


@dataclass
class Launched:
    """A batch whose forward pass is queued on the device; `result` waits for its vectors."""

    vectors: torch.Tensor  # float32 [rows, dim] on the CPU (pinned on GPU hosts), maybe not ready
    done: torch.cuda.Event | None

    def result(self) -> torch.Tensor:
        if self.done is not None:
            self.done.synchronize()
        return self.vectors


class Encoder:
    """One encoder. On a GPU callers hold `lock` around `launch`/`run` (one launch at a time);
    on a CPU they hold one of `passes` (a few passes at once: a model in inference mode may run
    in several threads); `tokenize` and `tokenize_chunks` are safe from any thread.

    `varlen`: None tries the packed path (kept if the model supports it and the load-time probe
    agrees with the padded path), False always pads. `compile`: compile the model's blocks at
    load (kept if they agree with eager; `compiled` says whether they were). `graphs`: on a GPU,
    packed batches replay CUDA graphs per shape bucket (graphs.py; kept if they agree with the
    plain launches at load; `graphed` says whether they were). `dtype`: what the forward pass
    runs in (tunewire.devices.chosen_compute_dtype; the fingerprint names it), None for the
    device's default."""

    def __init__(
        self,
        source: ModelSource,
        device: torch.device | None = None,
        varlen: bool | None = None,
        compile: bool = False,
        graphs: bool = False,
        shape: EncoderShape | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:

        self.source = source
        self.device = device or default_device()
        # The forward pass's dtype (None: `compute_dtype`'s: bf16 on a GPU, fp32 on a CPU).
        self.dtype = dtype or compute_dtype(self.device)
        self.lock = threading.Lock()
        # On a CPU, forward passes that may run at once, each outside `lock` (cpu_threads.py);
        # None on a GPU, where batches are launched in order under `lock` and run asynchronously.
        self.passes = (
            None if self.device.type == "cuda" else threading.BoundedSemaphore(PARALLEL_PASSES)
        )
        # On a GPU, batches launched and not yet finished (None on a CPU). Two: one computing
        # and the next queued behind it, so the device never waits for the host; a request
        # arriving while both are out waits for a free one, and the rows queued meanwhile go
        # in one batch (continuous batching) instead of each call's few texts launching a
        # small pass of their own behind the others.
        self.launches = (
            threading.BoundedSemaphore(GPU_BATCHES_IN_FLIGHT)
            if self.device.type == "cuda"
            else None
        )
        self._running_lock = threading.Lock()
        self._running = 0  # CPU passes running now
        self._log = log.bind(model=str(source.hub_id or source.path))
        self._open_lock = threading.Lock()
        self._config = self._tokenizer = self._tokenizing = None
        # Given (known from an earlier open of the same files), config and tokenizer are read
        # when a text first needs them; else now, so that a broken directory fails here.
        self.shape = shape if shape is not None else self._open()
        self._model: torch.nn.Module | None = None
        self._want_packed = varlen is not False
        self.packed = False  # decided when the weights load
        self._want_compile = compile
        self.compiled = False  # decided when the weights load
        self.compile_seconds = 0.0  # compiling and checking the blocks, at load
        self._want_graphs = graphs
        self._graphed: GraphedForward | None = None  # decided when the weights load
        # True waits on the host for each packed batch before and after its forward pass, as
        # launches did until 2026-12-03 (transformers' packed-sequence check, pooling's output
        # size): kept so that bench/embedder_throughput.py measures both paths in one run.
        self.host_sync = False

    def _open(self) -> EncoderShape:
        """Read config and tokenizer (once) and describe the encoder from them."""
        with self._open_lock:
            if self._tokenizer is None:
                auto_config, _, auto_tokenizer = _auto_classes()
                try:
                    config = auto_config.from_pretrained(self.source.path)
                    tokenizer = auto_tokenizer.from_pretrained(self.source.path)
                except Exception as exc:  # noqa: BLE001 - any failure here is the directory's
                    raise InvalidArgument(
                        f"cannot load encoder from {self.source.path}: {exc}",
                        field="encoder.model",
                    ) from None
                if tokenizer.pad_token is None:
                    # Decoder-only models often ship without a pad token; eos is masked out.
                    if tokenizer.eos_token is None:
                        raise InvalidArgument(
                            "the tokenizer has neither a pad nor an eos token",
                            field="encoder.model",
                        )
                    tokenizer.pad_token = tokenizer.eos_token
                tokenizer.padding_side = "right"
                self._config, self._tokenizer = config, tokenizer
                self._tokenizing = ParallelTokenizer(tokenizer)
                # Small first chunks start an idle GPU early (tokenizing.py); a CPU runs a
                # request's batches only once a budget's worth is queued: no use there.
                self._tokenizing.ramp = self.device.type == "cuda"
        config, tokenizer = self._config, self._tokenizer
        limits = [int(tokenizer.model_max_length)]
        positions = getattr(config, "max_position_embeddings", None)
        if positions:
            limits.append(int(positions))
        limits = [n for n in limits if 0 < n < _NO_LIMIT]
        return EncoderShape(
            model_type=str(getattr(config, "model_type", "unknown")),
            dimension=int(config.hidden_size),
            num_layers=int(config.num_hidden_layers),
            max_length=min(limits) if limits else 512,
        )

    @property
    def config(self):
        """transformers' config of the model (read on first use)."""
        if self._config is None:
            self._open()
        return self._config

    @property
    def tokenizer(self):
        """The model's tokenizer, padding on the right (read on first use)."""
        if self._tokenizer is None:
            self._open()
        return self._tokenizer

    @property
    def model_type(self) -> str:
        return self.shape.model_type

    @property
    def dimension(self) -> int:
        return self.shape.dimension

    @property
    def num_layers(self) -> int:
        return self.shape.num_layers

    @property
    def max_length(self) -> int:
        """The model's own limit: the tokenizer's and the position table's, whichever is lower."""
        return self.shape.max_length

    def effective_max_length(self, requested: int) -> int:
        """0 means the model's limit; larger requests are capped at it."""
        if requested < 0:
            raise InvalidArgument("max_length must be >= 0", field="encoder.max_length")
        return self.max_length if requested == 0 else min(requested, self.max_length)

    def normalise_layer(self, layer: int) -> int:
        """0 for the last hidden state, else an index into hidden_states (0 = embeddings)."""
        n = self.num_layers + 1  # hidden_states holds the embeddings plus one per layer
        if layer in (0, -1):
            return 0
        if not -n <= layer < n:
            raise InvalidArgument(
                f"layer {layer} is out of range for a model with "
                f"{self.num_layers} layers (use -{n}..{n - 1})",
                field="encoder.layer",
            )
        return layer if layer > 0 else n + layer

    @property
    def _pin(self) -> bool:
        return self.device.type == "cuda"

    def _pad(self, input_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to the longest row. Done here, not with `tokenizer.pad`, so a batch never
        touches the (not thread-safe) Rust tokenizer while another thread tokenises."""
        width = max(len(row) for row in input_ids)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(input_ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(input_ids), width), dtype=torch.long)
        for i, row in enumerate(input_ids):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        if self._pin:
            ids, mask = ids.pin_memory(), mask.pin_memory()
        return (ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True))

    def tokenize(self, texts: list[str], max_length: int, instruction: str = "") -> list[list[int]]:
        """Token ids per text (instruction prefixed, truncated to max_length, special tokens)."""
        if self._tokenizing is None:
            self._open()
        return self._tokenizing(texts, max_length, instruction)

    def tokenize_chunks(
        self, texts: list[str], max_length: int, instruction: str = ""
    ) -> list[Future[list[list[int]]]]:
        """`tokenize` in chunks of texts, in order, each a future tokenised in parallel."""
        if self._tokenizing is None:
            self._open()
        return self._tokenizing.submit(texts, max_length, instruction)

    def _ensure_model(self) -> torch.nn.Module:
        if self._model is None:
            self._log.info("loading weights", device=str(self.device), dtype=str(self.dtype))
            _, auto_model, _ = _auto_classes()
            kwargs = {"attn_implementation": varlen.register()} if self._want_packed else {}
            try:
                with building_modules():
                    try:
                        model = auto_model.from_pretrained(
                            self.source.path, dtype=self.dtype, **kwargs
                        )
                    except ValueError:  # the class does not take a custom attention function
                        if not kwargs:
                            raise
                        model = auto_model.from_pretrained(self.source.path, dtype=self.dtype)
            except Exception as exc:  # noqa: BLE001 - safetensors, torch, size mismatches...
                raise FailedPrecondition(
                    f"cannot load the weights in {self.source.path}: {exc}", field="encoder.model"
                ) from None
            self._model = model.to(self.device).eval()
            self.packed = self._probe_packed()
            if self._want_compile:
                self.compiled = self._compile()
            if self._want_graphs:
                self._graphed = self._graph()
            if self.device.type == "cuda":
                # A GPU's first stream must not wait for the tokenizing threads' copies
                # (tokenizing.py); on a CPU a warm job's start would pay for all of them.
                self._tokenizing.warm()
                _out_of_the_collectors_way()
            self._log.info(
                "weights loaded",
                packed=self.packed,
                compiled=self.compiled,
                graphed=self.graphed,
                attention=str(self._model.config._attn_implementation),
            )
        return self._model

    @torch.inference_mode()
    def _probe_packed(self) -> bool:
        """Whether the packed path reproduces the padded one on two probe texts."""
        if self._model.config._attn_implementation != varlen.ATTN_NAME:
            return False
        ids = self.tokenize(_PROBES, self.max_length)
        try:
            packed = self._forward_packed(ids, "mean", 0, False)
        except (TypeError, ValueError, RuntimeError) as exc:  # a model that rejects the kwargs
            self._log.info("packed path unavailable, padding", error=str(exc).splitlines()[0])
            return False
        padded = self._forward_padded(ids, "mean", 0, False)
        error = float(((packed - padded).norm(dim=-1) / padded.norm(dim=-1)).max())
        agrees = error < _PROBE_TOLERANCE[self.dtype]
        if not agrees:
            self._log.warning("packed path disagrees with padded, padding", rel_error=error)
        return agrees

    @torch.inference_mode()
    def _compile(self) -> bool:
        """Compile the blocks and run them now on three batch shapes (so neither compiling nor a
        recompile for a new shape falls on a request); keep them if they give the eager vectors.
        Token counts are symbolic (dynamic=True): every packed batch has a different one."""
        forward = self._forward_packed if self.packed else self._forward_padded
        ids = self.tokenize(_PROBES, self.max_length)
        shapes = [ids, ids[:1], ids[1:] + ids]
        eager = [forward(batch, "mean", 0, False) for batch in shapes]
        start = time.perf_counter()
        blocks = compile_blocks(self._model, dynamic=True, eager_rounding=True)
        try:
            compiled = [forward(batch, "mean", 0, False) for batch in shapes]
        except Exception as exc:  # noqa: BLE001 - dynamo, inductor or a compiler on this host
            uncompile_blocks(blocks)
            self._log.warning(
                "compiling the blocks failed, running eagerly",
                error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
            )
            return False
        self.compile_seconds = time.perf_counter() - start
        error = max(
            float(((c - e).norm(dim=-1) / e.norm(dim=-1)).max()) for c, e in zip(compiled, eager)
        )
        if not error < _PROBE_TOLERANCE[self.dtype]:
            uncompile_blocks(blocks)
            self._log.warning(
                "compiled blocks disagree with eager, running eagerly", rel_error=error
            )
            return False
        self._log.info(
            "blocks compiled",
            blocks=len(blocks),
            seconds=round(self.compile_seconds, 2),
            rel_error=error,
        )
        return True

    @torch.inference_mode()
    def _graph(self) -> GraphedForward | None:
        """CUDA graphs for packed batches, kept if the probe batches give the plain launches'
        vectors through them; None (plain launches) on a CPU, for padded models, or on failure."""
        if self.device.type != "cuda" or not self.packed:
            self._log.info("CUDA graphs need packed batches on a GPU: launching plainly")
            return None
        ids = self.tokenize(_PROBES, self.max_length)
        shapes = [ids, ids[:1], ids[1:] + ids]
        plain = [self._forward_packed(batch, "mean", 0, False) for batch in shapes]
        graphed = GraphedForward(self._hidden_packed, int(self.tokenizer.pad_token_id), self.device)
        try:
            got = [self._forward_packed(batch, "mean", 0, False, graphed) for batch in shapes]
        except Exception as exc:  # noqa: BLE001 - a capture a model or kernel does not allow
            self._log.warning(
                "capturing CUDA graphs failed, launching plainly",
                error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
            )
            return None
        error = max(
            float(((g - p).norm(dim=-1) / p.norm(dim=-1)).max()) for g, p in zip(got, plain)
        )
        if not error < _PROBE_TOLERANCE[self.dtype]:
            self._log.warning(
                "CUDA graphs disagree with plain launches, launching plainly", rel_error=error
            )
            return None
        self._log.info("CUDA graphs per bucket", rel_error=error, buckets=graphed.buckets)
        return graphed

    @property
    def graphed(self) -> bool:
        """Whether packed batches replay CUDA graphs (known once the weights are loaded)."""
        return self._graphed is not None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the weights now (preload, GetEncoderInfo) instead of at the first batch."""
        if self.loaded:
            return
        with self.lock:
            self._ensure_model()

    def _forward_padded(
        self, input_ids: list[list[int]], pooling: str, layer: int, normalize: bool
    ) -> torch.Tensor:
        ids, mask = self._pad(input_ids)
        out = self._model(
            input_ids=ids,
            attention_mask=mask,
            output_hidden_states=layer != 0,
            use_cache=False,
            return_dict=True,
        )
        hidden = out.last_hidden_state if layer == 0 else out.hidden_states[layer]
        return pool(hidden, mask, pooling, normalize)

    def _forward_packed(
        self,
        input_ids: list[list[int]],
        pooling: str,
        layer: int,
        normalize: bool,
        graphed: GraphedForward | None = None,
    ) -> torch.Tensor:
        host = varlen.pack(input_ids, pin=self._pin)
        graphed = graphed or self._graphed
        if graphed is not None and layer == 0:  # the graphs hold the last hidden state only
            self._host_sync()
            hidden = graphed(host)
            cu = host.cu_seq_lens.to(self.device, non_blocking=True)
            pooled = pool_packed(hidden, cu, pooling, normalize)
            self._host_sync()
            return pooled
        packed = host.to(self.device)
        token_types = getattr(self._model.config, "type_vocab_size", 0) > 0
        self._host_sync()
        out = self._model(
            **varlen.model_inputs(packed, token_types),
            output_hidden_states=layer != 0,
            use_cache=False,
            return_dict=True,
        )
        hidden = out.last_hidden_state if layer == 0 else out.hidden_states[layer]
        pooled = pool_packed(hidden[0], packed.cu_seq_lens, pooling, normalize)
        self._host_sync()
        return pooled

    def _hidden_packed(self, packed: varlen.Packed) -> torch.Tensor:
        """The last hidden state [1, tokens, dim] of a packed batch already on the device."""
        token_types = getattr(self._model.config, "type_vocab_size", 0) > 0
        out = self._model(
            **varlen.model_inputs(packed, token_types), use_cache=False, return_dict=True
        )
        return out.last_hidden_state

    def _host_sync(self) -> None:
        if self.host_sync and self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    @torch.inference_mode()
    def launch(
        self,
        input_ids: list[list[int]],
        *,
        pooling: str,
        layer: int,
        normalize: bool,
        packed: bool | None = None,
    ) -> Launched:
        """Queue one batch's forward pass; its pooled float32 vectors come from `.result()`.

        `layer` is already normalised (0 = last hidden state); `packed` None = this encoder's
        path (tests force one or the other)."""
        self._ensure_model()
        use_packed = self.packed if packed is None else packed
        if (
            packed is None
            and len(input_ids) == 1
            and self.device.type != "cuda"
            and not self.compiled
        ):
            # One text has no padding to save, and on a CPU the padded path skips the packed
            # one's per-text attention set-up: MiniLM on one SMS text, 8.6 against 9.5 ms on an
            # idle 2-core VM, 15 against 24 ms at load 5. (Not for compiled blocks: their graphs
            # are the packed path's, and the padded one would compile others on a request.)
            use_packed = False
        forward = self._forward_packed if use_packed else self._forward_padded
        if self.device.type != "cuda":
            lengths = [len(row) for row in input_ids]
            tokens = sum(lengths) if use_packed else len(lengths) * max(lengths, default=0)
            with self._running_lock:
                alone = not self._running
                self._running += 1
            try:
                with intra_op_threads(forward_threads(tokens, alone)):  # cpu_threads.py: why
                    vectors = forward(input_ids, pooling, layer, normalize)
            finally:
                with self._running_lock:
                    self._running -= 1
            return Launched(vectors.cpu(), None)
        vectors = forward(input_ids, pooling, layer, normalize)
        host = torch.empty(vectors.shape, dtype=vectors.dtype, pin_memory=True)
        host.copy_(vectors, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return Launched(host, done)

    def run(
        self,
        input_ids: list[list[int]],
        *,
        pooling: str,
        layer: int,
        normalize: bool,
        packed: bool | None = None,
    ) -> torch.Tensor:
        """Pooled float32 vectors [len(input_ids), dim] on the CPU, for one batch (blocking)."""
        return self.launch(
            input_ids, pooling=pooling, layer=layer, normalize=normalize, packed=packed
        ).result()

    @property
    def tokenizing(self) -> ParallelTokenizer:
        """The tokenizing threads (bench/embedder_throughput.py sets them as before)."""
        if self._tokenizing is None:
            self._open()
        return self._tokenizing

    @property
    def packed_batches(self) -> bool:
        """Whether batches are budgeted by real tokens (packed) rather than rows x longest;
        known once the weights are loaded (under the model lock, by one thread)."""
        self.load()
        return self.packed
