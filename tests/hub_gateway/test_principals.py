"""The gateway with principals: uploads are their creator's, Hub namespaces are per principal,
request ids are per principal and bound to their spec, and only a service acts for another."""

from __future__ import annotations

import pytest

from clients.hub import HubGatewayClient
from clients.sdk import connect
from tests.hub_gateway.conftest import start_gateway
from tunewire.auth import acting_for
from tunewire.errors import AlreadyExists, NotFound, PermissionDenied, Unauthenticated
from tunewire.server import ServerSecurity
from tunewire.tls import ClientSecurity
from tunewire.v1 import hub_gateway_pb2 as pb

TOKENS = {
    "alice": "tok-alice-3f1a",
    "bob": "tok-bob-9c2e",
    "admin": "tok-admin-77d0",
    "svc": "tok-svc-51b8",
}
TOKENS_FILE = (
    f"{TOKENS['alice']} train alice alice,alice-lab\n"
    f"{TOKENS['bob']} train bob\n"
    f"{TOKENS['admin']} admin root *\n"
    f"{TOKENS['svc']} service trainer-svc\n"
)


@pytest.fixture
def secured(tmp_path, hub, artifact_root):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS_FILE)
    app = start_gateway(
        tmp_path,
        hub,
        artifact_roots=[artifact_root],
        security=ServerSecurity(auth_tokens_file=tokens),
    )
    clients: list[HubGatewayClient] = []

    def client(who: str) -> HubGatewayClient:
        address = f"127.0.0.1:{app.port}"
        made = HubGatewayClient(address, connect(address, ClientSecurity(token=TOKENS[who])))
        clients.append(made)
        return made

    yield client
    for made in clients:
        made.close()
    app.close(grace=1.0)


def test_namespaces_and_ownership(secured, hub, adapter_model):
    alice, bob, admin = secured("alice"), secured("bob"), secured("admin")
    dry = {"dry_run": True}
    # A repo outside the caller's namespaces is refused before anything is read or sent.
    with pytest.raises(PermissionDenied) as info:
        bob.create_upload(pb.UploadSpec(repo_id="alice/model", **dry), adapter_model)
    assert info.value.reason == "NAMESPACE_NOT_ALLOWED" and info.value.field == "spec.repo_id"
    # Alice may use each namespace her line lists; admin's `*` allows any.
    mine = alice.create_upload(pb.UploadSpec(repo_id="alice/model", **dry), adapter_model)
    alice.create_upload(pb.UploadSpec(repo_id="alice-lab/model", **dry), adapter_model)
    with pytest.raises(PermissionDenied):
        alice.create_upload(pb.UploadSpec(repo_id="bob/model", **dry), adapter_model)
    admin.create_upload(pb.UploadSpec(repo_id="anyone/model", **dry), adapter_model)
    # Bob cannot see, watch or even detect Alice's upload: the answer a missing id gets.
    with pytest.raises(NotFound) as seen:
        bob.get(mine.id)
    with pytest.raises(NotFound) as missing:
        bob.get("up-0000000000000000")
    assert seen.value.message.replace(mine.id, "X") == missing.value.message.replace(
        "up-0000000000000000", "X"
    )
    with pytest.raises(NotFound):
        list(bob.watch(mine.id))
    assert alice.get(mine.id).state == pb.Upload.SUCCEEDED
    assert admin.get(mine.id).owner == "alice"
    assert hub.count("commits") == 0


def test_request_ids_are_per_principal_and_bound_to_the_request(secured, adapter_model):
    alice, bob = secured("alice"), secured("bob")
    spec = pb.UploadSpec(repo_id="alice/m", request_id="req-7", dry_run=True)
    first = alice.create_upload(spec, adapter_model)
    assert alice.create_upload(spec, adapter_model).id == first.id  # a retry
    with pytest.raises(AlreadyExists) as info:
        alice.create_upload(
            pb.UploadSpec(repo_id="alice/other", request_id="req-7", dry_run=True), adapter_model
        )
    assert info.value.field == "spec.request_id"
    # Bob's request with the same id is his own upload, not Alice's.
    his = bob.create_upload(
        pb.UploadSpec(repo_id="bob/m", request_id="req-7", dry_run=True), adapter_model
    )
    assert his.id != first.id and his.spec.repo_id == "bob/m"


def test_artifact_paths_are_for_admin_only(secured, artifact_root, adapter_model):
    inside = artifact_root / "job-of-alice"
    adapter_model.rename(inside)
    spec = pb.UploadSpec(repo_id="bob/stolen", artifact_path=str(inside), dry_run=True)
    with pytest.raises(PermissionDenied) as info:
        secured("bob").create_upload(spec)
    assert info.value.reason == "ARTIFACT_PATH_NOT_ALLOWED"
    spec.repo_id = "root/kept"
    assert secured("admin").create_upload(spec).state == pb.Upload.SUCCEEDED


def test_only_a_service_token_acts_for_another_principal(secured, adapter_model):
    spec = pb.UploadSpec(repo_id="alice/via-service", dry_run=True)
    # The trainer's service token, acting for Alice, uploads within Alice's namespaces ...
    with acting_for("alice"):
        done = secured("svc").create_upload(spec, adapter_model)
        with pytest.raises(PermissionDenied) as info:
            secured("svc").create_upload(pb.UploadSpec(repo_id="bob/x", dry_run=True))
        assert info.value.reason == "NAMESPACE_NOT_ALLOWED"
    # ... and what it made is Alice's.
    assert secured("alice").get(done.id).id == done.id
    with pytest.raises(NotFound):
        secured("bob").get(done.id)
    # Bob's train token naming Alice is refused; so is a service naming nobody known.
    with acting_for("alice"), pytest.raises(PermissionDenied) as info:
        secured("bob").get(done.id)
    assert info.value.reason == "PRINCIPAL_ASSERTION_NOT_ALLOWED"
    with acting_for("mallory"), pytest.raises(Unauthenticated) as info:
        secured("svc").get(done.id)
    assert info.value.reason == "PRINCIPAL_UNKNOWN"
    # Naming oneself is no assertion at all.
    with acting_for("alice"):
        assert secured("alice").get(done.id).id == done.id
