"""HubGatewayService over gRPC: protobuf in, domain calls, protobuf out. No upload logic here.

The one piece of I/O this layer does itself is to land the artifact on local disk (streamed chunks,
or the trainer's DownloadArtifact stream) because both arrive as gRPC streams; everything after that
is `UploadManager`'s.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import structlog

from services.hub_gateway.staging import StagingWriter, UploadSlots, resolve_under_roots
from services.hub_gateway.uploads import (
    UploadEvent,
    UploadManager,
    UploadRecord,
    UploadSpec,
)
from tunewire.auth import current_principal
from tunewire.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
    from_rpc_error,
)
from tunewire.streams import client_stream
from tunewire.timestamps import to_timestamp as _ts
from tunewire.v1 import hub_gateway_pb2 as pb
from tunewire.v1 import hub_gateway_pb2_grpc, trainer_pb2, trainer_pb2_grpc

log = structlog.get_logger("tunewire.hub_gateway.servicer")

SERVICE_NAME = "tunewire.v1.HubGatewayService"
_SPEC_FIELDS = [f.name for f in pb.UploadSpec.DESCRIPTOR.fields]


def spec_from_proto(msg: pb.UploadSpec) -> UploadSpec:
    return UploadSpec(**{name: getattr(msg, name) for name in _SPEC_FIELDS})


def spec_to_proto(spec: UploadSpec) -> pb.UploadSpec:
    return pb.UploadSpec(**{name: getattr(spec, name) for name in _SPEC_FIELDS})


def upload_to_proto(rec: UploadRecord) -> pb.Upload:
    return pb.Upload(
        id=rec.id,
        state=pb.Upload.State.Value(rec.state),
        spec=spec_to_proto(rec.spec),
        files=[
            pb.UploadedFile(path=f.path, size=f.size, sha256=f.sha256, lfs=f.lfs, skipped=f.skipped)
            for f in rec.files
        ],
        artifact_kind=rec.artifact_kind,
        model_card=rec.model_card,
        commit_url=rec.commit_url,
        commit_oid=rec.commit_oid,
        error=rec.error,
        error_reason=rec.error_reason,
        owner=rec.owner,
        bytes_total=rec.bytes_total,
        bytes_sent=rec.bytes_sent,
        create_time=_ts(rec.create_time),
        end_time=_ts(rec.end_time),
    )


def event_to_proto(event: UploadEvent) -> pb.UploadEvent:
    return pb.UploadEvent(
        upload_id=event.upload_id,
        sequence=event.sequence,
        state=pb.Upload.State.Value(event.state),
        bytes_sent=event.bytes_sent,
        bytes_total=event.bytes_total,
        files_done=event.files_done,
        files_total=event.files_total,
        message=event.message,
        time=_ts(event.time),
    )


class HubGatewayServicer(hub_gateway_pb2_grpc.HubGatewayServiceServicer):
    """`trainer` is a TrainerService stub factory, or None when no trainer is configured."""

    def __init__(
        self,
        manager: UploadManager,
        staging_root: Path,
        artifact_roots: list[Path],
        trainer: Callable[[], trainer_pb2_grpc.TrainerServiceStub] | None,
        slots: UploadSlots | None = None,
    ) -> None:
        self.manager = manager
        self.staging_root = staging_root
        self.artifact_roots = artifact_roots
        self.trainer = trainer
        self.slots = slots or UploadSlots()

    @client_stream  # read on the event loop; staged and hashed in a thread of its own
    def CreateUpload(
        self, request_iterator: Iterator[pb.CreateUploadRequest], context: grpc.ServicerContext
    ) -> pb.Upload:
        first = next(request_iterator, None)
        if first is None or not first.HasField("spec"):
            raise InvalidArgument("the first message must carry the upload spec", field="spec")
        caller = current_principal()
        spec = spec_from_proto(first.spec)
        spec.check()
        self.manager.check_endpoint(spec.endpoint)
        self.manager.check_namespace(spec, caller)
        existing = self.manager.find_by_request(spec, caller)
        if existing is not None:
            for _ in request_iterator:  # the retried stream's files are the ones we already have
                pass
            return upload_to_proto(existing)
        if spec.job_id and spec.artifact_path:
            raise InvalidArgument(
                "name a trainer job or an artifact path, not both", field="spec.artifact_path"
            )
        if spec.artifact_path:
            if not caller.sees_all:
                # The roots hold every principal's artifacts; a job is reached by its id, which
                # the trainer checks against the caller.
                raise PermissionDenied(
                    "only admin may upload from a path on the gateway's disk; "
                    "name the job (spec.job_id) or stream the files",
                    field="spec.artifact_path",
                    reason="ARTIFACT_PATH_NOT_ALLOWED",
                )
            self._no_files(request_iterator, "spec.artifact_path")
            source = resolve_under_roots(spec.artifact_path, self.artifact_roots)
            return upload_to_proto(self.manager.create(spec, source, owned=False, principal=caller))
        staging = self.staging_root / uuid.uuid4().hex
        with self.slots.take():
            try:
                if spec.job_id:
                    self._no_files(request_iterator, "spec.job_id")
                    self._fetch_job_artifact(spec.job_id, staging)
                else:
                    self._receive_files(request_iterator, staging)
                return upload_to_proto(
                    self.manager.create(spec, staging, owned=True, principal=caller)
                )
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # gone already when taken

    @staticmethod
    def _receive_files(request_iterator: Iterator[pb.CreateUploadRequest], staging: Path) -> None:
        """Each chunk to disk as it arrives (staging.py): one message in memory at a time."""
        writer = StagingWriter(staging, field="file")
        for req in request_iterator:
            if not req.HasField("file"):
                raise InvalidArgument("only the first message may carry the spec", field="spec")
            writer.write(req.file)
        writer.close()
        if not writer.done:
            raise InvalidArgument(
                "no files were sent (stream the artifact's files, or "
                "set spec.job_id or spec.artifact_path)",
                field="file",
            )

    @staticmethod
    def _no_files(request_iterator: Iterator[pb.CreateUploadRequest], field: str) -> None:
        for req in request_iterator:
            if req.HasField("file"):
                raise InvalidArgument(
                    "files were streamed although the spec names another source", field=field
                )

    def _fetch_job_artifact(self, job_id: str, dest: Path) -> None:
        if self.trainer is None:
            raise FailedPrecondition(
                "this gateway has no trainer address configured",
                field="spec.job_id",
                reason="NO_TRAINER",
            )
        # In this request's thread: the trainer sees the call as made for this caller
        # (tunewire.auth), so another principal's job id is NOT_FOUND there.
        log.info("fetching artifact from the trainer", job_id=job_id)
        try:
            StagingWriter(dest, field="job_id").write_all(
                self.trainer().DownloadArtifact(trainer_pb2.DownloadArtifactRequest(job_id=job_id))
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        except InvalidArgument as exc:
            # A bad stream from the trainer is not the client's mistake; a retry may succeed.
            raise Unavailable(
                f"the trainer sent a corrupt artifact for {job_id}: {exc.message}",
                field="spec.job_id",
                reason="TRAINER_ARTIFACT_CORRUPT",
            ) from None

    def GetUpload(self, request: pb.GetUploadRequest, context: grpc.ServicerContext) -> pb.Upload:
        return upload_to_proto(self.manager.get(request.id, current_principal()))

    async def WatchUpload(
        self, request: pb.WatchUploadRequest, context
    ) -> AsyncIterator[pb.UploadEvent]:
        """Every event from `from_sequence` on, then new ones until the upload ends; on the
        event loop, so a watcher holds no thread while it waits."""
        caller = current_principal()
        async for event in self.manager.watch_async(request.id, request.from_sequence, caller):
            yield event_to_proto(event)
