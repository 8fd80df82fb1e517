"""The hub gateway's client: start an upload (streaming an artifact's files with their sha256,
or naming a trainer job's artifact) and follow it to its end. The trainer uploads a finished job's
artifact through it; the SDK's `clients.hub.upload_to_hf_hub` wraps it for users."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from tunewire.artifact_files import list_files
from tunewire.channel_limits import STREAM_CHUNK_BYTES
from tunewire.clients.rpc import connect, rpc_errors
from tunewire.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TunewireError,
    Unauthenticated,
    Unavailable,
    from_rpc_error,
)
from tunewire.v1 import hub_gateway_pb2 as pb
from tunewire.v1 import hub_gateway_pb2_grpc

TERMINAL_STATES = (pb.Upload.SUCCEEDED, pb.Upload.FAILED)
# A FAILED upload's reason → the error the SDK raises for it.
_FAILURES: dict[str, type[TunewireError]] = {
    "HUB_UNAUTHENTICATED": Unauthenticated,
    "HUB_PERMISSION_DENIED": PermissionDenied,
    "HUB_REPO_NOT_FOUND": NotFound,
    "HUB_REVISION_NOT_FOUND": NotFound,
    "HUB_UNAVAILABLE": Unavailable,
    "HUB_REJECTED": FailedPrecondition,
    "HUB_REJECTED_REQUEST": InvalidArgument,
    "HUB_VERIFY_FAILED": FailedPrecondition,
    "HUB_TOKEN_UNREADABLE": FailedPrecondition,
    "ARTIFACT_CHANGED": InvalidArgument,
}


def iter_file_chunks(model_path: Path) -> Iterator[pb.UploadFileChunk]:
    """Every file of the artifact as chunks; the last chunk of each carries its sha256."""
    for rel in list_files(model_path):
        digest = hashlib.sha256()
        with (model_path / rel).open("rb") as fh:
            data = fh.read(STREAM_CHUNK_BYTES)
            while True:
                digest.update(data)
                following = fh.read(STREAM_CHUNK_BYTES)
                if not following:
                    yield pb.UploadFileChunk(
                        path=rel, data=data, last=True, sha256=digest.hexdigest()
                    )
                    break
                yield pb.UploadFileChunk(path=rel, data=data)
                data = following


class HubGatewayClient:
    """Typed client of HubGatewayService; every call raises domain errors, not grpc.RpcError."""

    def __init__(self, address: str, channel: grpc.Channel | None = None) -> None:
        self.address = address
        self.channel = channel or connect(address)
        self.stub = hub_gateway_pb2_grpc.HubGatewayServiceStub(self.channel)

    @rpc_errors
    def create_upload(self, spec: pb.UploadSpec, model_path: Path | None = None) -> pb.Upload:
        """Start an upload: stream `model_path`'s files, or none when the spec names a trainer
        job or a path under the gateway's artifact roots."""

        def requests() -> Iterator[pb.CreateUploadRequest]:
            yield pb.CreateUploadRequest(spec=spec)
            if model_path is not None:
                for chunk in iter_file_chunks(model_path):
                    yield pb.CreateUploadRequest(file=chunk)

        return self.stub.CreateUpload(requests())

    @rpc_errors
    def get(self, upload_id: str) -> pb.Upload:
        return self.stub.GetUpload(pb.GetUploadRequest(id=upload_id))

    def watch(self, upload_id: str, from_sequence: int = 0) -> Iterator[pb.UploadEvent]:
        try:
            yield from self.stub.WatchUpload(
                pb.WatchUploadRequest(id=upload_id, from_sequence=from_sequence)
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def wait(
        self, upload_id: str, on_event: Callable[[pb.UploadEvent], None] | None = None
    ) -> pb.Upload:
        """Follow the upload until it ends (re-attaching after a dropped stream) and return it."""
        seen = 0
        while True:
            try:
                for event in self.watch(upload_id, from_sequence=seen + 1):
                    seen = event.sequence
                    if on_event:
                        on_event(event)
            except Unavailable:
                pass  # the stream broke (gateway restart, connection age): re-attach
            upload = self.get(upload_id)
            if upload.state in TERMINAL_STATES:
                return upload

    def upload(
        self,
        spec: pb.UploadSpec,
        model_path: Path | None = None,
        on_event: Callable[[pb.UploadEvent], None] | None = None,
    ) -> pb.Upload:
        """Create the upload and follow it to its end: the SUCCEEDED Upload, or the domain
        error its failure maps to."""
        upload = self.create_upload(spec, model_path)
        if upload.state not in TERMINAL_STATES:
            upload = self.wait(upload.id, on_event)
        return raise_for_upload(upload)

    def close(self) -> None:
        self.channel.close()


def raise_for_upload(upload: pb.Upload) -> pb.Upload:
    """The upload itself when it SUCCEEDED; the matching domain error when it FAILED."""
    if upload.state == pb.Upload.FAILED:
        cls = _FAILURES.get(upload.error_reason, Internal)
        raise cls(
            upload.error or "upload failed",
            reason=upload.error_reason or None,
            metadata={"upload_id": upload.id},
        )
    return upload
