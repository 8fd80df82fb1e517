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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from tunewire.clients.hub_gateway import (
    TERMINAL_STATES,
    HubGatewayClient,
    iter_file_chunks,
    raise_for_upload,
)
from tunewire.errors import FailedPrecondition, InvalidArgument
from tunewire.v1 import hub_gateway_pb2 as pb

__all__ = [
    "TERMINAL_STATES",
    "HubGatewayClient",
    "iter_file_chunks",
    "raise_for_upload",
    "upload_to_hf_hub",
]


@contextlib.contextmanager
def _gateway(
    address: str | None, endpoint: str | None, job_id: str | None, data_dir: Path | None
) -> Iterator[str]:
    """The gateway to talk to: the given address, or one started in this process."""
    if address:
        yield address
        return
    from tunewire.paths import default_data_dir

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
            return client.upload(spec, path, on_event)
        finally:
            client.close()
