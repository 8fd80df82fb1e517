"""SDK for the hub gateway: upload an artifact to a Hugging Face Hub repo and follow it.

    from clients.hub import upload_to_hf_hub
    upload = upload_to_hf_hub("org/my-model", "runs/42/artifact", private=True,
                              gateway="127.0.0.1:50053")
    print(upload.commit_url)

Files are streamed with their sha256 (checked by the gateway); the upload is then followed over
WatchUpload until it ends. Without a gateway address, one is started in this process for the call
(the embedded mode), so the SDK works with nothing else running. Failures raise the
`tunewire.errors` class matching the gateway's reason (Unauthenticated for a rejected token, ...).
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from clients.sdk import connect
from clients.sdk import rpc_errors as _rpc
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
from tunewire.server import STREAM_CHUNK_BYTES
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
    "HUB_VERIFY_FAILED": FailedPrecondition,
    "HUB_TOKEN_UNREADABLE": FailedPrecondition,
    "ARTIFACT_CHANGED": InvalidArgument,
}


def iter_file_chunks(model_path: Path) -> Iterator[pb.UploadFileChunk]:
    """Every file of the artifact as chunks; the last chunk of each carries its sha256."""
    from services.hub_gateway.validate import list_files

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

    @_rpc
    def create_upload(self, spec: pb.UploadSpec, model_path: Path | None = None) -> pb.Upload:
        """Start an upload: stream `model_path`'s files, or none when the spec names a trainer
        job or a path under the gateway's artifact roots."""

        def requests() -> Iterator[pb.CreateUploadRequest]:
            yield pb.CreateUploadRequest(spec=spec)
            if model_path is not None:
                for chunk in iter_file_chunks(model_path):
                    yield pb.CreateUploadRequest(file=chunk)

        return self.stub.CreateUpload(requests())

    @_rpc
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


@contextlib.contextmanager
def _gateway(
    address: str | None, endpoint: str | None, job_id: str | None, data_dir: Path | None
) -> Iterator[str]:
    """The gateway to talk to: the given address, or one started in this process."""
    if address:
        yield address
        return
    from clients.embedded import default_data_dir

    data_dir = Path(data_dir or default_data_dir()).resolve()
    if job_id:
        # The job's artifact lives with the embedded trainer: start all services on its data dir.
        from clients.embedded import start_embedded

        with start_embedded(data_dir) as services:
            if services.hub_gateway_address is None:
                raise FailedPrecondition(
                    "the embedded services have no hub gateway", field="gateway"
                )
            yield services.hub_gateway_address
        return
    from services.hub_gateway.app import Settings, start

    app = start(Settings(data_dir=data_dir, port=0, endpoint=endpoint))
    try:
        yield f"127.0.0.1:{app.port}"
    finally:
        app.close(grace=1.0)


def upload_to_hf_hub(
    repo_id: str,
    model_path: str | Path | None,
    private: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
    dry_run: bool = False,
    gateway: str | None = None,
    job_id: str | None = None,
    *,
    overwrite_model_card: bool = False,
    request_id: str | None = None,
    data_dir: Path | None = None,
    on_event: Callable[[pb.UploadEvent], None] | None = None,
) -> pb.Upload:
    """Upload the artifact at `model_path` (or trainer job `job_id`'s) to `repo_id` in one commit
    and return the finished Upload (commit_url, files with lfs/skipped flags, model_card).
    `dry_run`: validate and render the card only. Raises a TunewireError subclass on failure."""
    path = None
    if not job_id:
        if model_path is None or not Path(model_path).is_dir():
            raise InvalidArgument(f"{model_path} is not a directory", field="model_path")
        path = Path(model_path)
    spec = pb.UploadSpec(
        repo_id=repo_id,
        private=private,
        commit_message=commit_message or "",
        commit_description=commit_description or "",
        revision=revision or "",
        create_pr=create_pr,
        endpoint=endpoint or "",
        dry_run=dry_run,
        job_id=job_id or "",
        overwrite_model_card=overwrite_model_card,
        request_id=request_id or uuid.uuid4().hex,
    )
    with _gateway(gateway, endpoint, job_id, data_dir) as address:
        client = HubGatewayClient(address)
        try:
            upload = client.create_upload(spec, path)
            if upload.state not in TERMINAL_STATES:
                upload = client.wait(upload.id, on_event)
        finally:
            client.close()
    return raise_for_upload(upload)
