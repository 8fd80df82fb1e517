"""A frozen encoder: tokenizer + `transformers.AutoModel`, and how texts become pooled vectors.

Loading is split in two: `Encoder.open` reads only config and tokenizer (enough for the
fingerprint, so cache hits never wait for weights), and the weights load on the first batch.
Padding is always on the right: a causal model then never attends to a pad, and positions of real
tokens do not shift, so a text's vector does not depend on the batch it was computed in (which a
cache of vectors relies on). Pooling itself is also correct under left padding.
"""

from __future__ import annotations

import threading

import structlog
import torch

from services.embedder.pooling import pool
from services.embedder.source import ModelSource
from tunewire.errors import FailedPrecondition, InvalidArgument

log = structlog.get_logger(__name__)

# Tokenizers without a real limit report a huge sentinel (int(1e30)); ignore it.
_NO_LIMIT = 1_000_000


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs (fast, range of fp32); fp32 on CPU, where bf16 matmuls are slow and lossy."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class Encoder:
    """One encoder. `run` is not thread-safe by itself: callers hold `lock` (one batch at a time
    per model); `tokenize` is safe from any thread."""

    def __init__(self, source: ModelSource, device: torch.device | None = None) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.source = source
        self.device = device or default_device()
        self.dtype = compute_dtype(self.device)
        self.lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._log = log.bind(model=str(source.hub_id or source.path))
        try:
            self.config = AutoConfig.from_pretrained(source.path)
            self.tokenizer = AutoTokenizer.from_pretrained(source.path)
        except Exception as exc:  # noqa: BLE001 - any failure here is the model directory's
            raise InvalidArgument(f"cannot load encoder from {source.path}: {exc}",
                                  field="encoder.model") from None
        if self.tokenizer.pad_token is None:
            # Decoder-only models often ship without a pad token; eos is masked out anyway.
            if self.tokenizer.eos_token is None:
                raise InvalidArgument("the tokenizer has neither a pad nor an eos token",
                                      field="encoder.model")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self._model: torch.nn.Module | None = None

    @property
    def model_type(self) -> str:
        return str(getattr(self.config, "model_type", "unknown"))

    @property
    def dimension(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def max_length(self) -> int:
        """The model's own limit: the tokenizer's and the position table's, whichever is lower."""
        limits = [int(self.tokenizer.model_max_length)]
        positions = getattr(self.config, "max_position_embeddings", None)
        if positions:
            limits.append(int(positions))
        limits = [n for n in limits if 0 < n < _NO_LIMIT]
        return min(limits) if limits else 512

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
            raise InvalidArgument(f"layer {layer} is out of range for a model with "
                                  f"{self.num_layers} layers (use -{n}..{n - 1})",
                                  field="encoder.layer")
        return layer if layer > 0 else n + layer

    def _pad(self, input_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad to the longest row. Done here, not with `tokenizer.pad`, so a batch never
        touches the (not thread-safe) Rust tokenizer while another thread tokenises."""
        width = max(len(row) for row in input_ids)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(input_ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(input_ids), width), dtype=torch.long)
        for i, row in enumerate(input_ids):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return ids.to(self.device), mask.to(self.device)

    def tokenize(self, texts: list[str], max_length: int, instruction: str = "") -> list[list[int]]:
        """Token ids per text (instruction prefixed, truncated to max_length, special tokens)."""
        inputs = [instruction + t for t in texts] if instruction else texts
        with self._tokenizer_lock:  # the Rust tokenizer raises "Already borrowed" if shared
            encoded = self.tokenizer(inputs, truncation=True, max_length=max_length,
                                     padding=False, add_special_tokens=True)
        # A tokenizer that adds no special tokens gives [] for "": a zero-length row cannot go
        # through a model, so it becomes one eos (or pad) token.
        filler = [int(self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None
                      else self.tokenizer.pad_token_id)]
        return [list(ids) or filler for ids in encoded["input_ids"]]

    def _ensure_model(self) -> torch.nn.Module:
        if self._model is None:
            from transformers import AutoModel

            self._log.info("loading weights", device=str(self.device), dtype=str(self.dtype))
            try:
                model = AutoModel.from_pretrained(self.source.path, dtype=self.dtype)
            except Exception as exc:  # noqa: BLE001 - safetensors, torch, size mismatches...
                raise FailedPrecondition(f"cannot load the weights in {self.source.path}: {exc}",
                                         field="encoder.model") from None
            self._model = model.to(self.device).eval()
        return self._model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the weights now (preload, GetEncoderInfo) instead of at the first batch."""
        if self.loaded:
            return
        with self.lock:
            self._ensure_model()

    @torch.inference_mode()
    def run(self, input_ids: list[list[int]], *, pooling: str, layer: int,
            normalize: bool) -> torch.Tensor:
        """Pooled float32 vectors [len(input_ids), dim] on the CPU, for one padded batch.

        `layer` is already normalised (0 = last hidden state)."""
        model = self._ensure_model()
        ids, mask = self._pad(input_ids)
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=layer != 0,
                    return_dict=True)
        hidden = out.last_hidden_state if layer == 0 else out.hidden_states[layer]
        return pool(hidden, mask, pooling, normalize).cpu()

