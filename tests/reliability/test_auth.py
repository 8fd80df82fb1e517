"""Authentication, roles, TLS and mutual TLS against real servers on 127.0.0.1."""

from __future__ import annotations

import shutil
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.embedder.app import Settings as EmbedderSettings
from services.embedder.app import start as start_embedder
from services.trainer.app import Settings as TrainerSettings
from services.trainer.app import start as start_trainer
from tests.reliability.certs import CA
from tests.reliability.conftest import TOKENS, code_of, write_tokens
from tunewire import auth
from tunewire.errors import from_rpc_error
from tunewire.server import ServerSecurity, channel_options
from tunewire.tls import ClientSecurity, ServerTLS
from tunewire.v1 import embedder_pb2, hub_gateway_pb2, trainer_pb2, trainer_pb2_grpc

CONFIG = (
    '{"input_features": [{"name": "t", "type": "text"}], '
    '"output_features": [{"name": "y", "type": "binary"}]}'
)


@pytest.fixture
def trainer_with(tmp_path):
    apps = []

    def start(security: ServerSecurity, embedder: str | None = None):
        app = start_trainer(
            TrainerSettings(
                data_dir=tmp_path / f"t{len(apps)}", port=0, embedder=embedder, security=security
            )
        )
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.running.stop(None).wait()
        app.close()


def stub(port: int, security: ClientSecurity = ClientSecurity()):  # noqa: B008
    channel = security.channel(f"127.0.0.1:{port}", channel_options())
    return trainer_pb2_grpc.TrainerServiceStub(channel), channel


def test_every_rpc_is_in_the_role_table():
    for module in (embedder_pb2, trainer_pb2, hub_gateway_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert f"/{service.full_name}/{method.name}" in auth.METHOD_ROLES


def test_token_statuses_by_role(trainer_with, tokens_file):
    app = trainer_with(ServerSecurity(auth_tokens_file=tokens_file))
    anon, _ = stub(app.port)
    list_jobs = trainer_pb2.ListJobsRequest()
    # No token, a wrong token: UNAUTHENTICATED with a reason the client can act on.
    with pytest.raises(grpc.RpcError) as info:
        anon.ListJobs(list_jobs)
    err = from_rpc_error(info.value)
    assert err.code == grpc.StatusCode.UNAUTHENTICATED and err.reason == "TOKEN_MISSING"
    wrong, _ = stub(app.port, ClientSecurity(token="not-a-token"))
    with pytest.raises(grpc.RpcError) as info:
        wrong.ListJobs(list_jobs)
    assert from_rpc_error(info.value).reason == "TOKEN_UNKNOWN"
    # A read token reads but may not train; a train token may; admin may do all.
    reader, _ = stub(app.port, ClientSecurity(token=TOKENS["read"]))
    assert code_of(lambda: reader.ListJobs(list_jobs)) == grpc.StatusCode.OK
    with pytest.raises(grpc.RpcError) as info:
        reader.CreateJob(trainer_pb2.CreateJobRequest(config_json=CONFIG))
    err = from_rpc_error(info.value)
    assert err.code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "ROLE_NOT_ALLOWED"
    assert err.metadata["required_role"] == "train"
    embedder_only, _ = stub(app.port, ClientSecurity(token=TOKENS["embed"]))
    assert (
        code_of(lambda: embedder_only.GetJob(trainer_pb2.GetJobRequest(id="job-x")))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    for role in ("train", "admin"):
        client, _ = stub(app.port, ClientSecurity(token=TOKENS[role]))
        # Past auth: the missing data set is the service's own INVALID_ARGUMENT.
        assert (
            code_of(lambda: client.CreateJob(trainer_pb2.CreateJobRequest(config_json=CONFIG)))
            == grpc.StatusCode.INVALID_ARGUMENT
        )
    # A client-streaming RPC is refused before the server reads the stream.
    assert (
        code_of(
            lambda: reader.UploadDataset(
                iter(
                    [
                        trainer_pb2.UploadDatasetRequest(
                            metadata=trainer_pb2.UploadDatasetRequest.Metadata(filename="a.csv")
                        )
                    ]
                )
            )
        )
        == grpc.StatusCode.PERMISSION_DENIED
    )
    with pytest.raises(grpc.RpcError) as info:
        anon.UploadDataset(iter([trainer_pb2.UploadDatasetRequest(chunk=b"x")]))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_token_and_reflection_can_be_turned_off(trainer_with, tokens_file):
    on = trainer_with(ServerSecurity(auth_tokens_file=tokens_file))
    off = trainer_with(ServerSecurity(auth_tokens_file=tokens_file, reflection=False))
    for app in (on, off):
        _, channel = stub(app.port)
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert resp.status == health_pb2.HealthCheckResponse.SERVING

    def list_services(port: int, token: str | None) -> grpc.StatusCode:
        _, channel = stub(port, ClientSecurity(token=token))
        calls = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        return code_of(lambda: list(calls))

    assert list_services(on.port, None) == grpc.StatusCode.UNAUTHENTICATED
    assert list_services(on.port, TOKENS["read"]) == grpc.StatusCode.OK
    assert list_services(off.port, TOKENS["admin"]) == grpc.StatusCode.UNIMPLEMENTED


def test_token_file_is_reloaded_and_a_broken_one_keeps_the_old_tokens(trainer_with, tmp_path):
    path = write_tokens(tmp_path / "tokens", {"read": "first-token"})
    app = trainer_with(ServerSecurity(auth_tokens_file=path))
    req = trainer_pb2.ListJobsRequest()
    first, _ = stub(app.port, ClientSecurity(token="first-token"))
    second, _ = stub(app.port, ClientSecurity(token="second-token"))
    assert code_of(lambda: first.ListJobs(req)) == grpc.StatusCode.OK
    assert code_of(lambda: second.ListJobs(req)) == grpc.StatusCode.UNAUTHENTICATED
    write_tokens(path, {"read": "second-token"})  # a rotated Secret
    deadline = time.monotonic() + 5
    while code_of(lambda: second.ListJobs(req)) != grpc.StatusCode.OK:
        assert time.monotonic() < deadline, "the new token was never accepted"
        time.sleep(0.2)
    assert code_of(lambda: first.ListJobs(req)) == grpc.StatusCode.UNAUTHENTICATED
    path.write_text("second-token superuser\n")  # unknown role: rejected, old tokens stay
    time.sleep(1.2)
    assert code_of(lambda: second.ListJobs(req)) == grpc.StatusCode.OK


def test_token_file_errors_never_echo_the_token():
    with pytest.raises(ValueError) as info:
        auth.parse_tokens("s3cr3t-value root\n", "tokens")
    assert "s3cr3t" not in str(info.value) and "tokens:1" in str(info.value)


def test_tls_refuses_plaintext_and_mutual_tls_refuses_clients_without_a_cert(
    trainer_with, tokens_file, pki
):
    server, client, ca = pki["server"], pki["client"], pki["ca"].path
    tls = trainer_with(
        ServerSecurity(auth_tokens_file=tokens_file, tls=ServerTLS(server.cert, server.key))
    )
    mtls = trainer_with(ServerSecurity(tls=ServerTLS(server.cert, server.key, ca)))
    req = trainer_pb2.ListJobsRequest()
    plain, _ = stub(tls.port, ClientSecurity(token=TOKENS["read"]))
    assert code_of(lambda: plain.ListJobs(req, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    secure, _ = stub(tls.port, ClientSecurity(token=TOKENS["read"], ca=ca))
    assert code_of(lambda: secure.ListJobs(req, timeout=5)) == grpc.StatusCode.OK
    no_token, _ = stub(tls.port, ClientSecurity(ca=ca))
    assert code_of(lambda: no_token.ListJobs(req, timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
    other_ca = CA(pki["dir"] / "other", "someone else")
    untrusting, _ = stub(tls.port, ClientSecurity(token=TOKENS["read"], ca=other_ca.path))
    assert code_of(lambda: untrusting.ListJobs(req, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    anonymous, _ = stub(mtls.port, ClientSecurity(ca=ca))
    assert code_of(lambda: anonymous.ListJobs(req, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    with_cert, _ = stub(mtls.port, ClientSecurity(ca=ca, cert=client.cert, key=client.key))
    assert code_of(lambda: with_cert.ListJobs(req, timeout=5)) == grpc.StatusCode.OK


def test_server_certificate_is_reloaded_when_its_files_change(trainer_with, tmp_path, pki):
    live = tmp_path / "live"
    live.mkdir()
    old = pki["ca"].issue("tls", directory=live)
    app = trainer_with(ServerSecurity(tls=ServerTLS(old.cert, old.key)))
    req = trainer_pb2.ListJobsRequest()
    trusts_old, _ = stub(app.port, ClientSecurity(ca=pki["ca"].path))
    assert code_of(lambda: trusts_old.ListJobs(req, timeout=5)) == grpc.StatusCode.OK
    new_ca = CA(tmp_path / "new-ca", "rotated CA")
    new_ca.issue("tls", directory=live)  # same paths, new certificate and key
    time.sleep(1.1)  # the watcher stats at most once a second
    trusts_new, _ = stub(app.port, ClientSecurity(ca=new_ca.path))
    assert code_of(lambda: trusts_new.ListJobs(req, timeout=5)) == grpc.StatusCode.OK
    fresh_old, _ = stub(app.port, ClientSecurity(ca=pki["ca"].path))
    assert code_of(lambda: fresh_old.ListJobs(req, timeout=5)) == grpc.StatusCode.UNAVAILABLE
    shutil.rmtree(live)


def test_trainer_calls_the_embedder_with_its_service_token(
    trainer_with, tmp_path, tokens_file, monkeypatch
):
    embedder = start_embedder(
        EmbedderSettings(
            port=0, data_dir=tmp_path / "emb", security=ServerSecurity(auth_tokens_file=tokens_file)
        )
    )
    try:
        address = f"127.0.0.1:{embedder.port}"
        # The trainer's outgoing channel reads TUNEWIRE_TOKEN when it first calls the embedder.
        anonymous = trainer_with(ServerSecurity(), embedder=address)
        with_token = trainer_with(ServerSecurity(), embedder=address)
        csv = b"t,y\nhello,1\nbye,0\n"
        config = (
            '{"input_features": [{"name": "t", "type": "text", "encoder": {"type": '
            '"auto_transformer", "pretrained_model_name_or_path": "/no/such/model"}}], '
            '"output_features": [{"name": "y", "type": "binary"}]}'
        )
        errors = {}
        for name, app, token in (
            ("anonymous", anonymous, None),
            ("with_token", with_token, TOKENS["train"]),
        ):
            if token:
                monkeypatch.setenv("TUNEWIRE_TOKEN", token)
            else:
                monkeypatch.delenv("TUNEWIRE_TOKEN", raising=False)
            client, _ = stub(app.port)
            ds = client.UploadDataset(
                iter(
                    [
                        trainer_pb2.UploadDatasetRequest(
                            metadata=trainer_pb2.UploadDatasetRequest.Metadata(filename="d.csv")
                        ),
                        trainer_pb2.UploadDatasetRequest(chunk=csv),
                    ]
                )
            )
            with pytest.raises(grpc.RpcError) as info:
                client.CreateJob(trainer_pb2.CreateJobRequest(config_json=config, dataset_id=ds.id))
            errors[name] = from_rpc_error(info.value)
        assert errors["anonymous"].reason == "PEER_AUTH_FAILED"
        assert errors["anonymous"].code == grpc.StatusCode.FAILED_PRECONDITION
        # With the token the embedder answers, and the bad model path is the client's error.
        assert errors["with_token"].code == grpc.StatusCode.INVALID_ARGUMENT
        assert errors["with_token"].field.startswith("input_features[0].encoder")
    finally:
        embedder.stop()


def test_cli_takes_token_and_certificates_from_flags_or_env(
    trainer_with, tokens_file, pki, capsys, monkeypatch
):
    from clients.cli import main

    server, client, ca = pki["server"], pki["client"], pki["ca"].path
    app = trainer_with(
        ServerSecurity(auth_tokens_file=tokens_file, tls=ServerTLS(server.cert, server.key, ca))
    )
    address = f"127.0.0.1:{app.port}"
    for name in (
        "TUNEWIRE_TOKEN",
        "TUNEWIRE_TOKEN_FILE",
        "TUNEWIRE_TLS_CA",
        "TUNEWIRE_TLS_CERT",
        "TUNEWIRE_TLS_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    mtls = ["--tls-ca", str(ca), "--tls-cert", str(client.cert), "--tls-key", str(client.key)]
    assert (
        main(["jobs", "list", "--trainer", address, "--json", "--token", TOKENS["read"], *mtls])
        == 0
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == "[]"  # --json: the last line
    # No token: one line naming the problem, usage exit code; the token never printed.
    assert main(["jobs", "list", "--trainer", address, *mtls]) == 2
    errors = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")
    ]  # the server's own log shares this stderr here
    assert len(errors) == 1 and "requires a token" in errors[0]
    # The same from the environment.
    monkeypatch.setenv("TUNEWIRE_TOKEN", TOKENS["read"])
    monkeypatch.setenv("TUNEWIRE_TLS_CA", str(ca))
    monkeypatch.setenv("TUNEWIRE_TLS_CERT", str(client.cert))
    monkeypatch.setenv("TUNEWIRE_TLS_KEY", str(client.key))
    assert main(["jobs", "list", "--trainer", address, "--json"]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1] == "[]" and TOKENS["read"] not in out.err


def test_client_security_from_env_and_repr_without_the_token():
    plain = ClientSecurity.from_env({})
    assert not plain.uses_tls and plain.token is None and plain.token_file is None
    env = ClientSecurity.from_env({"TUNEWIRE_TOKEN": "s3cret-tok", "TUNEWIRE_TLS": "1"})
    assert env.uses_tls and env.token == "s3cret-tok"
    assert "s3cret-tok" not in repr(env)  # settings objects get logged; the token must not be
