import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tunewire.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatasetFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_FORMAT_UNSPECIFIED: _ClassVar[DatasetFormat]
    DATASET_FORMAT_CSV: _ClassVar[DatasetFormat]
    DATASET_FORMAT_TSV: _ClassVar[DatasetFormat]
    DATASET_FORMAT_JSONL: _ClassVar[DatasetFormat]
    DATASET_FORMAT_PARQUET: _ClassVar[DatasetFormat]
    DATASET_FORMAT_JSON: _ClassVar[DatasetFormat]
    DATASET_FORMAT_EXCEL: _ClassVar[DatasetFormat]
    DATASET_FORMAT_FEATHER: _ClassVar[DatasetFormat]
    DATASET_FORMAT_ORC: _ClassVar[DatasetFormat]
DATASET_FORMAT_UNSPECIFIED: DatasetFormat
DATASET_FORMAT_CSV: DatasetFormat
DATASET_FORMAT_TSV: DatasetFormat
DATASET_FORMAT_JSONL: DatasetFormat
DATASET_FORMAT_PARQUET: DatasetFormat
DATASET_FORMAT_JSON: DatasetFormat
DATASET_FORMAT_EXCEL: DatasetFormat
DATASET_FORMAT_FEATHER: DatasetFormat
DATASET_FORMAT_ORC: DatasetFormat

class UploadDatasetRequest(_message.Message):
    __slots__ = ("metadata", "chunk")
    class Metadata(_message.Message):
        __slots__ = ("filename", "format")
        FILENAME_FIELD_NUMBER: _ClassVar[int]
        FORMAT_FIELD_NUMBER: _ClassVar[int]
        filename: str
        format: DatasetFormat
        def __init__(self, filename: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ...) -> None: ...
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    metadata: UploadDatasetRequest.Metadata
    chunk: bytes
    def __init__(self, metadata: _Optional[_Union[UploadDatasetRequest.Metadata, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "filename", "format", "rows", "columns", "size_bytes", "sha256", "owner")
    ID_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    filename: str
    format: DatasetFormat
    rows: int
    columns: _containers.RepeatedScalarFieldContainer[str]
    size_bytes: int
    sha256: str
    owner: str
    def __init__(self, id: _Optional[str] = ..., filename: _Optional[str] = ..., format: _Optional[_Union[DatasetFormat, str]] = ..., rows: _Optional[int] = ..., columns: _Optional[_Iterable[str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class DeleteDatasetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("config_json", "dataset_id", "training_set_id", "validation_set_id", "test_set_id", "request_id", "upload_to")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINING_SET_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SET_ID_FIELD_NUMBER: _ClassVar[int]
    TEST_SET_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_TO_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    dataset_id: str
    training_set_id: str
    validation_set_id: str
    test_set_id: str
    request_id: str
    upload_to: str
    def __init__(self, config_json: _Optional[str] = ..., dataset_id: _Optional[str] = ..., training_set_id: _Optional[str] = ..., validation_set_id: _Optional[str] = ..., test_set_id: _Optional[str] = ..., request_id: _Optional[str] = ..., upload_to: _Optional[str] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("split", "feature", "name", "value")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    split: str
    feature: str
    name: str
    value: float
    def __init__(self, split: _Optional[str] = ..., feature: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "config_json", "dataset_id", "training_set_id", "validation_set_id", "test_set_id", "request_id", "metrics", "artifact_path", "error", "create_time", "start_time", "end_time", "upload_to", "upload_id", "attempts", "owner")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Job.State]
        QUEUED: _ClassVar[Job.State]
        RUNNING: _ClassVar[Job.State]
        SUCCEEDED: _ClassVar[Job.State]
        FAILED: _ClassVar[Job.State]
        CANCELLED: _ClassVar[Job.State]
    STATE_UNSPECIFIED: Job.State
    QUEUED: Job.State
    RUNNING: Job.State
    SUCCEEDED: Job.State
    FAILED: Job.State
    CANCELLED: Job.State
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINING_SET_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SET_ID_FIELD_NUMBER: _ClassVar[int]
    TEST_SET_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PATH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_TO_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: Job.State
    config_json: str
    dataset_id: str
    training_set_id: str
    validation_set_id: str
    test_set_id: str
    request_id: str
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    artifact_path: str
    error: str
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    upload_to: str
    upload_id: str
    attempts: int
    owner: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[Job.State, str]] = ..., config_json: _Optional[str] = ..., dataset_id: _Optional[str] = ..., training_set_id: _Optional[str] = ..., validation_set_id: _Optional[str] = ..., test_set_id: _Optional[str] = ..., request_id: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., artifact_path: _Optional[str] = ..., error: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., upload_to: _Optional[str] = ..., upload_id: _Optional[str] = ..., attempts: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("id", "from_sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    from_sequence: int
    def __init__(self, id: _Optional[str] = ..., from_sequence: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "sequence", "time", "state_change", "progress", "metrics", "log")
    class StateChange(_message.Message):
        __slots__ = ("state", "message")
        STATE_FIELD_NUMBER: _ClassVar[int]
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        state: Job.State
        message: str
        def __init__(self, state: _Optional[_Union[Job.State, str]] = ..., message: _Optional[str] = ...) -> None: ...
    class Progress(_message.Message):
        __slots__ = ("phase", "epoch", "step", "total_steps", "loss", "throughput", "unit")
        PHASE_FIELD_NUMBER: _ClassVar[int]
        EPOCH_FIELD_NUMBER: _ClassVar[int]
        STEP_FIELD_NUMBER: _ClassVar[int]
        TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
        LOSS_FIELD_NUMBER: _ClassVar[int]
        THROUGHPUT_FIELD_NUMBER: _ClassVar[int]
        UNIT_FIELD_NUMBER: _ClassVar[int]
        phase: str
        epoch: int
        step: int
        total_steps: int
        loss: float
        throughput: float
        unit: str
        def __init__(self, phase: _Optional[str] = ..., epoch: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., throughput: _Optional[float] = ..., unit: _Optional[str] = ...) -> None: ...
    class Metrics(_message.Message):
        __slots__ = ("metrics",)
        METRICS_FIELD_NUMBER: _ClassVar[int]
        metrics: _containers.RepeatedCompositeFieldContainer[Metric]
        def __init__(self, metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ...) -> None: ...
    class Log(_message.Message):
        __slots__ = ("message",)
        MESSAGE_FIELD_NUMBER: _ClassVar[int]
        message: str
        def __init__(self, message: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sequence: int
    time: _timestamp_pb2.Timestamp
    state_change: JobEvent.StateChange
    progress: JobEvent.Progress
    metrics: JobEvent.Metrics
    log: JobEvent.Log
    def __init__(self, job_id: _Optional[str] = ..., sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_change: _Optional[_Union[JobEvent.StateChange, _Mapping]] = ..., progress: _Optional[_Union[JobEvent.Progress, _Mapping]] = ..., metrics: _Optional[_Union[JobEvent.Metrics, _Mapping]] = ..., log: _Optional[_Union[JobEvent.Log, _Mapping]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "dataset_id", "evaluate", "generation_config_json", "split", "batch_size")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    GENERATION_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    model: str
    dataset_id: str
    evaluate: bool
    generation_config_json: str
    split: str
    batch_size: int
    def __init__(self, model: _Optional[str] = ..., dataset_id: _Optional[str] = ..., evaluate: _Optional[bool] = ..., generation_config_json: _Optional[str] = ..., split: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class FeaturePredictions(_message.Message):
    __slots__ = ("feature", "predictions", "probabilities", "class_names")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    feature: str
    predictions: _containers.RepeatedScalarFieldContainer[str]
    probabilities: _tensor_pb2.Tensor
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, feature: _Optional[str] = ..., predictions: _Optional[_Iterable[str]] = ..., probabilities: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("features", "metrics", "rows", "test_statistics_json")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TEST_STATISTICS_JSON_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeaturePredictions]
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    rows: int
    test_statistics_json: str
    def __init__(self, features: _Optional[_Iterable[_Union[FeaturePredictions, _Mapping]]] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., rows: _Optional[int] = ..., test_statistics_json: _Optional[str] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("job_id", "paths")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("path", "data", "last", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    data: bytes
    last: bool
    sha256: str
    def __init__(self, path: _Optional[str] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., sha256: _Optional[str] = ...) -> None: ...
