"""The encoder spec: everything besides a text that determines its vector, and so the embedder's
cache key. One definition for the SDK, the embedder service (which builds it from the request),
the trainer (an artifact's `EncoderRef` holds one) and the wire (`to_proto`)."""

from __future__ import annotations

from dataclasses import dataclass

from tunewire import tensors
from tunewire.errors import TunewireError
from tunewire.v1 import embedder_pb2

# Pooling names (Ludwig's `reduce_output` spellings among them) -> the wire enum.
POOLINGS = {
    "mean": embedder_pb2.POOLING_MEAN,
    "avg": embedder_pb2.POOLING_MEAN,
    "cls": embedder_pb2.POOLING_CLS,
    "cls_pooled": embedder_pb2.POOLING_CLS,
    "last": embedder_pb2.POOLING_LAST,
    "max": embedder_pb2.POOLING_MAX,
    "sum": embedder_pb2.POOLING_SUM,
}


@dataclass(frozen=True)
class EncoderSpec:
    """Everything besides the text that determines a vector (and so its cache key)."""

    model: str
    pooling: str = "mean"
    max_length: int = 0  # 0 = the model's limit
    normalize: bool = False
    dtype: str = "float32"
    layer: int = 0  # 0 or -1 = last; negative from the end; positive into hidden_states
    instruction: str = ""
    revision: str = ""

    def to_proto(self) -> embedder_pb2.EncoderSpec:
        if self.pooling not in POOLINGS:
            raise TunewireError(f"pooling must be one of {', '.join(POOLINGS)}", field="pooling")
        if self.dtype not in tensors.DTYPE_NAMES:
            raise TunewireError("dtype must be float32 or float16", field="dtype")
        return embedder_pb2.EncoderSpec(
            model=self.model,
            revision=self.revision,
            pooling=POOLINGS[self.pooling],
            max_length=self.max_length,
            normalize=self.normalize,
            dtype=tensors.DTYPE_NAMES[self.dtype],
            layer=self.layer,
            instruction=self.instruction,
        )
