"""Fetching a job's head files from the trainer, on the caller's behalf.

With a token of its own (TUNEWIRE_TOKEN / TUNEWIRE_TOKEN_FILE: a `service` token) the embedder
calls as itself acting for the caller: the call runs inside the PredictRows handler, so
`tunewire.tls` names the caller's principal in `x-tunewire-on-behalf-of`, and the trainer applies
its ownership rules to the caller. Without one it presents the caller's own bearer token instead,
which the trainer judges the same way. TLS settings are the embedder's own (TUNEWIRE_TLS_*).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc

from tunewire.errors import TunewireError, from_rpc_error
from tunewire.server import channel_options
from tunewire.tls import ClientSecurity
from tunewire.v1 import trainer_pb2, trainer_pb2_grpc

FETCH_TIMEOUT_S = 60.0


class TrainerArtifacts:
    """Downloads named files of a job's artifact; one channel, many callers' tokens."""

    def __init__(self, address: str, security: ClientSecurity | None = None) -> None:
        security = security or ClientSecurity.from_env()
        self._own_token = bool(security.token or security.token_file)
        self._channel = security.channel(address, channel_options())
        self._stub = trainer_pb2_grpc.TrainerServiceStub(self._channel)

    def __call__(self, job_id: str, token: str | None, files: tuple[str, ...], dest: Path) -> None:
        forward = token and not self._own_token
        metadata = [("authorization", f"Bearer {token}")] if forward else None
        request = trainer_pb2.DownloadArtifactRequest(job_id=job_id, paths=list(files))
        handle, digest = None, None
        try:
            for chunk in self._stub.DownloadArtifact(
                request, metadata=metadata, timeout=FETCH_TIMEOUT_S
            ):
                if handle is None:
                    if chunk.path not in files:
                        raise TunewireError(f"unexpected artifact file {chunk.path!r}")
                    handle, digest = open(dest / chunk.path, "wb"), hashlib.sha256()
                handle.write(chunk.data)
                digest.update(chunk.data)
                if chunk.last:
                    handle.close()
                    if chunk.sha256 and digest.hexdigest() != chunk.sha256:
                        raise TunewireError(
                            f"checksum mismatch for {chunk.path}", field="model", reason="DATA_LOSS"
                        )
                    handle = None
        except grpc.RpcError as exc:
            err = from_rpc_error(exc)
            err.field = err.field if err.field != "job_id" else "model"
            raise err from None
        finally:
            if handle is not None:
                handle.close()

    def close(self) -> None:
        self._channel.close()
