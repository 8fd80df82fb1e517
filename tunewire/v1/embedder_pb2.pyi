from tunewire.v1 import tensor_pb2 as _tensor_pb2
from tunewire.v1 import trainer_pb2 as _trainer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Pooling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_UNSPECIFIED: _ClassVar[Pooling]
    POOLING_MEAN: _ClassVar[Pooling]
    POOLING_CLS: _ClassVar[Pooling]
    POOLING_LAST: _ClassVar[Pooling]
    POOLING_MAX: _ClassVar[Pooling]
    POOLING_SUM: _ClassVar[Pooling]
POOLING_UNSPECIFIED: Pooling
POOLING_MEAN: Pooling
POOLING_CLS: Pooling
POOLING_LAST: Pooling
POOLING_MAX: Pooling
POOLING_SUM: Pooling

class EncoderSpec(_message.Message):
    __slots__ = ("model", "revision", "pooling", "max_length", "normalize", "dtype", "layer", "instruction")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    model: str
    revision: str
    pooling: Pooling
    max_length: int
    normalize: bool
    dtype: _tensor_pb2.DType
    layer: int
    instruction: str
    def __init__(self, model: _Optional[str] = ..., revision: _Optional[str] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., max_length: _Optional[int] = ..., normalize: _Optional[bool] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., layer: _Optional[int] = ..., instruction: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("encoder", "texts", "joined", "write_behind")
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    WRITE_BEHIND_FIELD_NUMBER: _ClassVar[int]
    encoder: EncoderSpec
    texts: _containers.RepeatedScalarFieldContainer[str]
    joined: JoinedTexts
    write_behind: bool
    def __init__(self, encoder: _Optional[_Union[EncoderSpec, _Mapping]] = ..., texts: _Optional[_Iterable[str]] = ..., joined: _Optional[_Union[JoinedTexts, _Mapping]] = ..., write_behind: _Optional[bool] = ...) -> None: ...

class JoinedTexts(_message.Message):
    __slots__ = ("utf8", "count")
    UTF8_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    utf8: bytes
    count: int
    def __init__(self, utf8: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "cache_hits", "cache_misses", "fingerprint", "offset", "last")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    embeddings: _tensor_pb2.Tensor
    cache_hits: int
    cache_misses: int
    fingerprint: str
    offset: int
    last: bool
    def __init__(self, embeddings: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ..., fingerprint: _Optional[str] = ..., offset: _Optional[int] = ..., last: _Optional[bool] = ...) -> None: ...

class GetEncoderInfoRequest(_message.Message):
    __slots__ = ("encoder",)
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    encoder: EncoderSpec
    def __init__(self, encoder: _Optional[_Union[EncoderSpec, _Mapping]] = ...) -> None: ...

class GetEncoderInfoResponse(_message.Message):
    __slots__ = ("fingerprint", "dimension", "model_type", "max_length", "device", "compute_dtype")
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    fingerprint: str
    dimension: int
    model_type: str
    max_length: int
    device: str
    compute_dtype: str
    def __init__(self, fingerprint: _Optional[str] = ..., dimension: _Optional[int] = ..., model_type: _Optional[str] = ..., max_length: _Optional[int] = ..., device: _Optional[str] = ..., compute_dtype: _Optional[str] = ...) -> None: ...

class GetCacheStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCacheStatsResponse(_message.Message):
    __slots__ = ("entries", "bytes", "hits", "misses", "map_size", "forward_passes", "computed_texts", "shared_batches", "dropped_texts", "computed_tokens")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    MAP_SIZE_FIELD_NUMBER: _ClassVar[int]
    FORWARD_PASSES_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_TEXTS_FIELD_NUMBER: _ClassVar[int]
    SHARED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_TEXTS_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    entries: int
    bytes: int
    hits: int
    misses: int
    map_size: int
    forward_passes: int
    computed_texts: int
    shared_batches: int
    dropped_texts: int
    computed_tokens: int
    def __init__(self, entries: _Optional[int] = ..., bytes: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., map_size: _Optional[int] = ..., forward_passes: _Optional[int] = ..., computed_texts: _Optional[int] = ..., shared_batches: _Optional[int] = ..., dropped_texts: _Optional[int] = ..., computed_tokens: _Optional[int] = ...) -> None: ...

class PredictRowsRequest(_message.Message):
    __slots__ = ("model", "columns")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    model: str
    columns: _containers.RepeatedCompositeFieldContainer[RowColumn]
    def __init__(self, model: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[RowColumn, _Mapping]]] = ...) -> None: ...

class RowColumn(_message.Message):
    __slots__ = ("name", "values", "missing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[str]
    missing: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ..., missing: _Optional[_Iterable[int]] = ...) -> None: ...

class PredictRowsResponse(_message.Message):
    __slots__ = ("features", "rows", "cache_hits", "cache_misses")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CACHE_MISSES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[_trainer_pb2.FeaturePredictions]
    rows: int
    cache_hits: int
    cache_misses: int
    def __init__(self, features: _Optional[_Iterable[_Union[_trainer_pb2.FeaturePredictions, _Mapping]]] = ..., rows: _Optional[int] = ..., cache_hits: _Optional[int] = ..., cache_misses: _Optional[int] = ...) -> None: ...
