"""The gRPC face of the embedder: protobuf <-> domain objects, nothing else (no torch here).

Validation errors are raised as `tunewire.errors.*` with the field path; the shared interceptor
maps them to status codes, so nothing is caught here.
"""

from __future__ import annotations

from typing import Iterator

import grpc

from services.embedder.service import EmbedderService, EncoderSpec
from tunewire.errors import InvalidArgument
from tunewire.tensors import to_proto
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc, tensor_pb2

DEFAULT_MAX_TEXTS = 4096
# A hard cap per text: past it tokenising alone costs more than the call is worth.
DEFAULT_MAX_TEXT_BYTES = 1 << 20

_POOLING = {
    embedder_pb2.POOLING_UNSPECIFIED: "mean",
    embedder_pb2.POOLING_MEAN: "mean",
    embedder_pb2.POOLING_CLS: "cls",
    embedder_pb2.POOLING_LAST: "last",
    embedder_pb2.POOLING_MAX: "max",
    embedder_pb2.POOLING_SUM: "sum",
}
_DTYPE = {
    tensor_pb2.DTYPE_UNSPECIFIED: "float32",
    tensor_pb2.DTYPE_FLOAT32: "float32",
    tensor_pb2.DTYPE_FLOAT16: "float16",
}


def spec_from_proto(msg: embedder_pb2.EncoderSpec) -> EncoderSpec:
    """Validate and convert an EncoderSpec; errors name the field as `encoder.<name>`."""
    if not msg.model.strip():
        raise InvalidArgument("model is required: a local directory or a Hub id",
                              field="encoder.model")
    if msg.max_length < 0:
        raise InvalidArgument(f"max_length must be >= 0 (0 = the model's limit), got "
                              f"{msg.max_length}", field="encoder.max_length")
    if msg.pooling not in _POOLING:
        raise InvalidArgument(f"unknown pooling value {msg.pooling}", field="encoder.pooling")
    if msg.dtype not in _DTYPE:
        name = tensor_pb2.DType.Name(msg.dtype) if msg.dtype in tensor_pb2.DType.values() \
            else str(msg.dtype)
        raise InvalidArgument(f"unsupported dtype {name}: use DTYPE_FLOAT32 or DTYPE_FLOAT16",
                              field="encoder.dtype")
    return EncoderSpec(model=msg.model.strip(), revision=msg.revision,
                       pooling=_POOLING[msg.pooling], max_length=msg.max_length,
                       normalize=msg.normalize, dtype=_DTYPE[msg.dtype], layer=msg.layer,
                       instruction=msg.instruction)


class EmbedderServicer(embedder_pb2_grpc.EmbedderServiceServicer):
    def __init__(self, service: EmbedderService, max_texts: int = DEFAULT_MAX_TEXTS,
                 max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> None:
        self.service = service
        self.max_texts = max_texts
        self.max_text_bytes = max_text_bytes

    def _embed(self, request: embedder_pb2.EmbedRequest) -> embedder_pb2.EmbedResponse:
        spec = spec_from_proto(request.encoder)
        if len(request.texts) > self.max_texts:
            raise InvalidArgument(f"{len(request.texts)} texts in one request; the limit is "
                                  f"{self.max_texts}: split the request", field="texts")
        for i, text in enumerate(request.texts):
            if len(text) > self.max_text_bytes // 4 and len(text.encode()) > self.max_text_bytes:
                raise InvalidArgument(f"text of {len(text.encode())} bytes; the limit is "
                                      f"{self.max_text_bytes}", field=f"texts[{i}]")
        result = self.service.embed(spec, list(request.texts))
        return embedder_pb2.EmbedResponse(embeddings=to_proto(result.vectors),
                                          cache_hits=result.hits, cache_misses=result.misses,
                                          fingerprint=result.fingerprint)

    def Embed(self, request, context: grpc.ServicerContext) -> embedder_pb2.EmbedResponse:
        return self._embed(request)

    def StreamEmbed(self, request_iterator, context: grpc.ServicerContext
                    ) -> Iterator[embedder_pb2.EmbedResponse]:
        for request in request_iterator:
            yield self._embed(request)

    def GetEncoderInfo(self, request, context: grpc.ServicerContext
                       ) -> embedder_pb2.GetEncoderInfoResponse:
        info = self.service.info(spec_from_proto(request.encoder))
        return embedder_pb2.GetEncoderInfoResponse(
            fingerprint=info.fingerprint, dimension=info.dimension, model_type=info.model_type,
            max_length=info.max_length, device=info.device)

    def GetCacheStats(self, request, context: grpc.ServicerContext
                      ) -> embedder_pb2.GetCacheStatsResponse:
        stats = self.service.cache_stats()
        return embedder_pb2.GetCacheStatsResponse(entries=stats.entries, bytes=stats.bytes,
                                                  hits=stats.hits, misses=stats.misses,
                                                  map_size=stats.map_size)
