"""HubClient against the test Hub: backoff, giving up, and the HTTP → domain error table."""

from __future__ import annotations

import hashlib

import pytest

from services.hub_gateway.hub_client import HubClient, LocalFile
from tests.hub_gateway.conftest import TOKEN
from tunewire.clients.hub_gateway import raise_for_upload
from tunewire.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    TunewireError,
    Unavailable,
)
from tunewire.v1 import hub_gateway_pb2 as pb


def files_of(root) -> list[LocalFile]:
    return [
        LocalFile(p.name, p, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.iterdir())
        if p.is_file()
    ]


def test_gives_up_after_max_attempts_with_growing_delays(hub, adapter_model):
    delays: list[float] = []
    hub.fail("POST", r"/commit/", 503, times=100)
    client = HubClient(hub.endpoint, TOKEN, max_attempts=4, base_delay_s=1.0, sleep=delays.append)
    with pytest.raises(Unavailable) as info:
        client.upload("org/down", files_of(adapter_model))
    assert info.value.reason == "HUB_UNAVAILABLE" and "4 attempts" in str(info.value)
    assert len(delays) == 3 and all(0.5 <= d / 2**i <= 1.0 for i, d in enumerate(delays))
    assert hub.count("commits") == 0


def test_forbidden_is_permission_denied_without_retry(hub, adapter_model):
    hub.fail("POST", r"/preupload/", 403, times=1)
    delays: list[float] = []
    client = HubClient(hub.endpoint, TOKEN, sleep=delays.append)
    with pytest.raises(PermissionDenied) as info:
        client.upload("org/forbidden", files_of(adapter_model))
    assert info.value.reason == "HUB_PERMISSION_DENIED" and delays == []
    assert TOKEN not in str(info.value)


def test_commit_whose_answer_was_lost_is_not_committed_twice(hub, adapter_model, monkeypatch):
    """The commit lands but the connection drops before the answer: the retry's diff finds every
    file on the remote and commits nothing more."""
    client = HubClient(hub.endpoint, TOKEN, sleep=lambda s: None)
    real = client._api.create_commit
    calls = []

    def lossy(*args, **kwargs):
        result = real(*args, **kwargs)
        calls.append(result)
        if len(calls) == 1:
            raise ConnectionResetError("connection reset by peer")
        return result

    monkeypatch.setattr(client._api, "create_commit", lossy)
    result = client.upload("org/lost", files_of(adapter_model))
    assert len(calls) == 1 and hub.count("commits") == 1
    assert result.commit_oid == hub.commits_on("org/lost")[0]
    assert not any(f.skipped for f in result.files)


@pytest.mark.parametrize("status", [422, 409])
def test_a_rejection_raises_the_same_error_on_the_gateway_and_in_the_sdk(
    hub, adapter_model, status
):
    """The Hub refusing a request (4xx other than auth/404): the gateway's error and the SDK's
    error for the FAILED upload that records it are one class."""
    hub.fail("POST", r"/preupload/", status, times=1)
    client = HubClient(hub.endpoint, TOKEN, sleep=lambda s: None)
    with pytest.raises(TunewireError) as info:
        client.upload("org/rejected", files_of(adapter_model))
    failed = pb.Upload(
        state=pb.Upload.FAILED, error=str(info.value), error_reason=info.value.reason
    )
    with pytest.raises(TunewireError) as sdk:
        raise_for_upload(failed)
    expected = InvalidArgument if status == 422 else FailedPrecondition
    assert type(info.value) is expected and type(sdk.value) is expected
