"""The gateway's memory per upload is bounded: messages beyond a few chunks are refused by
gRPC, and uploads beyond `max_receiving_uploads` at once are RESOURCE_EXHAUSTED, over real gRPC."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc
import pytest

from tests.hub_gateway.conftest import start_gateway
from tunewire.errors import from_rpc_error
from tunewire.server import channel_options
from tunewire.v1 import hub_gateway_pb2 as pb
from tunewire.v1 import hub_gateway_pb2_grpc


@pytest.fixture
def small_gateway(tmp_path, hub):
    app = start_gateway(tmp_path, hub, max_message_bytes=256 * 1024, max_receiving_uploads=1)
    with grpc.insecure_channel(f"127.0.0.1:{app.port}", options=channel_options()) as channel:
        yield hub_gateway_pb2_grpc.HubGatewayServiceStub(channel), hub
    app.close()


def _spec(hub, request_id: str) -> pb.CreateUploadRequest:
    return pb.CreateUploadRequest(
        spec=pb.UploadSpec(repo_id="org/m", endpoint=hub.endpoint, request_id=request_id)
    )


def test_a_chunk_over_the_message_limit_is_resource_exhausted(small_gateway):
    stub, hub = small_gateway
    data = b"x" * (300 * 1024)
    chunk = pb.UploadFileChunk(
        path="README.md", data=data, last=True, sha256=hashlib.sha256(data).hexdigest()
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateUpload(iter([_spec(hub, "big"), pb.CreateUploadRequest(file=chunk)]), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_uploads_beyond_the_limit_are_refused_while_one_is_received(small_gateway):
    stub, hub = small_gateway
    held = threading.Event()

    def stalled():
        yield _spec(hub, "first")
        held.wait(60)  # sends nothing more until the test is done

    first = stub.CreateUpload.future(stalled(), timeout=30)
    try:
        refusal = None
        deadline = time.monotonic() + 60  # by time, not tries: a loaded host is slow to start it
        while time.monotonic() < deadline:  # until the first upload holds its slot
            if first.done():
                # It lost the race for the one slot to a probe below (and was refused): again.
                first = stub.CreateUpload.future(stalled(), timeout=30)
            try:
                stub.CreateUpload(iter([_spec(hub, "second")]), timeout=10)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refusal = from_rpc_error(exc)
                    break
            threading.Event().wait(0.05)
        assert refusal is not None and refusal.reason == "UPLOADS_BUSY"
    finally:
        held.set()
        first.cancel()
