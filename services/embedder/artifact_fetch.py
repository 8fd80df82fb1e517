"""Fetching a job's head files from the trainer, on the caller's behalf.

The embedder presents the caller's own bearer token (forwarded from its call), so the trainer
applies its ownership rules to the caller, not to the embedder; TLS settings are the embedder's
own (TUNEWIRE_TLS_* as for any service-to-service call). A caller without a token (a server with
auth off) is fetched for with the embedder's own token, if it has one.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
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
        self._own_token = security._token_source()
        # No token on the channel itself: each call carries the one it acts for.
        self._channel = replace(security, token=None, token_file=None).channel(
            address, channel_options()
        )
        self._stub = trainer_pb2_grpc.TrainerServiceStub(self._channel)

    def __call__(self, job_id: str, token: str | None, files: tuple[str, ...], dest: Path) -> None:
        token = token or (self._own_token() if self._own_token else None)
        metadata = [("authorization", f"Bearer {token}")] if token else None
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
