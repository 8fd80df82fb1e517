import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UploadSpec(_message.Message):
    __slots__ = ("repo_id", "private", "commit_message", "commit_description", "revision", "create_pr", "endpoint", "dry_run", "job_id", "overwrite_model_card", "request_id", "artifact_path")
    REPO_ID_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    COMMIT_DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATE_PR_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_MODEL_CARD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PATH_FIELD_NUMBER: _ClassVar[int]
    repo_id: str
    private: bool
    commit_message: str
    commit_description: str
    revision: str
    create_pr: bool
    endpoint: str
    dry_run: bool
    job_id: str
    overwrite_model_card: bool
    request_id: str
    artifact_path: str
    def __init__(self, repo_id: _Optional[str] = ..., private: _Optional[bool] = ..., commit_message: _Optional[str] = ..., commit_description: _Optional[str] = ..., revision: _Optional[str] = ..., create_pr: _Optional[bool] = ..., endpoint: _Optional[str] = ..., dry_run: _Optional[bool] = ..., job_id: _Optional[str] = ..., overwrite_model_card: _Optional[bool] = ..., request_id: _Optional[str] = ..., artifact_path: _Optional[str] = ...) -> None: ...

class UploadFileChunk(_message.Message):
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

class CreateUploadRequest(_message.Message):
    __slots__ = ("spec", "file")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    spec: UploadSpec
    file: UploadFileChunk
    def __init__(self, spec: _Optional[_Union[UploadSpec, _Mapping]] = ..., file: _Optional[_Union[UploadFileChunk, _Mapping]] = ...) -> None: ...

class UploadedFile(_message.Message):
    __slots__ = ("path", "size", "sha256", "lfs", "skipped")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LFS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    lfs: bool
    skipped: bool
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., lfs: _Optional[bool] = ..., skipped: _Optional[bool] = ...) -> None: ...

class Upload(_message.Message):
    __slots__ = ("id", "state", "spec", "files", "artifact_kind", "model_card", "commit_url", "commit_oid", "error", "bytes_total", "bytes_sent", "create_time", "end_time", "error_reason", "owner")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Upload.State]
        PENDING: _ClassVar[Upload.State]
        RUNNING: _ClassVar[Upload.State]
        SUCCEEDED: _ClassVar[Upload.State]
        FAILED: _ClassVar[Upload.State]
    STATE_UNSPECIFIED: Upload.State
    PENDING: Upload.State
    RUNNING: Upload.State
    SUCCEEDED: Upload.State
    FAILED: Upload.State
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_CARD_FIELD_NUMBER: _ClassVar[int]
    COMMIT_URL_FIELD_NUMBER: _ClassVar[int]
    COMMIT_OID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: Upload.State
    spec: UploadSpec
    files: _containers.RepeatedCompositeFieldContainer[UploadedFile]
    artifact_kind: str
    model_card: str
    commit_url: str
    commit_oid: str
    error: str
    bytes_total: int
    bytes_sent: int
    create_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    error_reason: str
    owner: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[Upload.State, str]] = ..., spec: _Optional[_Union[UploadSpec, _Mapping]] = ..., files: _Optional[_Iterable[_Union[UploadedFile, _Mapping]]] = ..., artifact_kind: _Optional[str] = ..., model_card: _Optional[str] = ..., commit_url: _Optional[str] = ..., commit_oid: _Optional[str] = ..., error: _Optional[str] = ..., bytes_total: _Optional[int] = ..., bytes_sent: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error_reason: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class GetUploadRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchUploadRequest(_message.Message):
    __slots__ = ("id", "from_sequence")
    ID_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    from_sequence: int
    def __init__(self, id: _Optional[str] = ..., from_sequence: _Optional[int] = ...) -> None: ...

class UploadEvent(_message.Message):
    __slots__ = ("upload_id", "sequence", "state", "bytes_sent", "bytes_total", "files_done", "files_total", "message", "time")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    FILES_DONE_FIELD_NUMBER: _ClassVar[int]
    FILES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    sequence: int
    state: Upload.State
    bytes_sent: int
    bytes_total: int
    files_done: int
    files_total: int
    message: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, upload_id: _Optional[str] = ..., sequence: _Optional[int] = ..., state: _Optional[_Union[Upload.State, str]] = ..., bytes_sent: _Optional[int] = ..., bytes_total: _Optional[int] = ..., files_done: _Optional[int] = ..., files_total: _Optional[int] = ..., message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
