"""`clients/cli.py serve all` takes the services' security flags (tunewire/server_flags.py):
all three servers in one process then require tokens and speak TLS, and call each other with the
service token over TLS."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.reliability.conftest import TOKENS, code_of
from tests.reliability.procs import free_port
from tunewire.errors import from_rpc_error
from tunewire.server import channel_options
from tunewire.tls import ClientSecurity
from tunewire.v1 import (
    embedder_pb2,
    embedder_pb2_grpc,
    hub_gateway_pb2,
    hub_gateway_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "clients" / "cli.py")]
CLIENT_ENV = (
    "TUNEWIRE_TOKEN",
    "TUNEWIRE_TOKEN_FILE",
    "TUNEWIRE_TLS",
    "TUNEWIRE_TLS_CA",
    "TUNEWIRE_TLS_CERT",
    "TUNEWIRE_TLS_KEY",
)


def _free_base() -> int:
    """A port p with p..p+3 free (serve all's three gRPC ports and its HTTP port)."""
    while True:
        base = free_port()
        if base + 3 < 65536 and all(_free(base + i) for i in range(4)):
            return base


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_serve_all_requires_tokens_and_tls_and_its_services_use_their_token(
    tmp_path, tokens_file, pki
):
    server, ca = pki["server"], pki["ca"].path
    service_token = tmp_path / "service-token"
    service_token.write_text(TOKENS["service"] + "\n")
    base = _free_base()
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env["TUNEWIRE_TLS_CA"] = str(ca)  # how the three services verify each other
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [
            *CLI,
            "serve",
            "all",
            "--port",
            str(base),
            "--data_dir",
            str(tmp_path / "state"),
            "--auth-tokens-file",
            str(tokens_file),
            "--service-token-file",
            str(service_token),
            "--tls-cert",
            str(server.cert),
            "--tls-key",
            str(server.key),
            "--no-reflection",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def channel(token: str | None = None, tls: bool = True, port: int = base + 1):
        security = ClientSecurity(token=token, ca=ca if tls else None)
        return security.channel(f"127.0.0.1:{port}", channel_options())

    try:
        # Health needs no token (Kubernetes probes), over TLS.
        health = health_pb2_grpc.HealthStub(channel())
        deadline, status = time.monotonic() + 120, None
        while status != health_pb2.HealthCheckResponse.SERVING:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"trainer not SERVING: {status}"
            try:
                status = health.Check(
                    health_pb2.HealthCheckRequest(service="tunewire.v1.TrainerService"), timeout=2
                ).status
            except grpc.RpcError:
                time.sleep(0.3)
        # Every one of the three servers refuses a call without a token, takes the right one.
        calls = {
            base: lambda ch: embedder_pb2_grpc.EmbedderServiceStub(ch).GetCacheStats(
                embedder_pb2.GetCacheStatsRequest(), timeout=5
            ),
            base + 1: lambda ch: trainer_pb2_grpc.TrainerServiceStub(ch).ListJobs(
                trainer_pb2.ListJobsRequest(), timeout=5
            ),
            base + 2: lambda ch: hub_gateway_pb2_grpc.HubGatewayServiceStub(ch).GetUpload(
                hub_gateway_pb2.GetUploadRequest(id="no-such-upload"), timeout=5
            ),
        }
        for port, call in calls.items():
            assert code_of(lambda: call(channel(port=port))) == grpc.StatusCode.UNAUTHENTICATED
            expected = grpc.StatusCode.NOT_FOUND if port == base + 2 else grpc.StatusCode.OK
            assert code_of(lambda: call(channel(TOKENS["read"], port=port))) == expected
        # TLS only, and reflection off.
        plain = channel(TOKENS["read"], tls=False)
        assert code_of(lambda: calls[base + 1](plain)) == grpc.StatusCode.UNAVAILABLE
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel(TOKENS["read"]))
        assert (
            code_of(
                lambda: list(
                    reflect.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
                    )
                )
            )
            == grpc.StatusCode.UNIMPLEMENTED
        )
        # The trainer calls the embedder with the service token over TLS: a bad encoder path is
        # then the client's error, by its field (not PEER_AUTH_FAILED or UNAVAILABLE).
        trainer = trainer_pb2_grpc.TrainerServiceStub(channel(TOKENS["train"]))
        ds = trainer.UploadDataset(
            iter(
                [
                    trainer_pb2.UploadDatasetRequest(
                        metadata=trainer_pb2.UploadDatasetRequest.Metadata(filename="d.csv")
                    ),
                    trainer_pb2.UploadDatasetRequest(chunk=b"t,y\nhello,1\nbye,0\n"),
                ]
            ),
            timeout=30,
        )
        config = (
            '{"input_features": [{"name": "t", "type": "text", "encoder": {"type": '
            '"auto_transformer", "pretrained_model_name_or_path": "/no/such/model"}}], '
            '"output_features": [{"name": "y", "type": "binary"}]}'
        )
        with pytest.raises(grpc.RpcError) as info:
            trainer.CreateJob(
                trainer_pb2.CreateJobRequest(config_json=config, dataset_id=ds.id), timeout=60
            )
        err = from_rpc_error(info.value)
        # Shared (tokens): a path outside the embedder's model roots, the config's to change.
        assert err.code == grpc.StatusCode.PERMISSION_DENIED, err
        assert err.reason == "OUTSIDE_MODEL_ROOTS"
        assert err.field.startswith("input_features[0].encoder")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        text = (tmp_path / "serve.log").read_text()
        assert "Traceback" not in text and TOKENS["train"] not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_serve_all_refuses_security_its_services_could_not_honour(
    tmp_path, tokens_file, pki, capsys, monkeypatch
):
    from clients.cli import main

    for name in CLIENT_ENV:
        monkeypatch.delenv(name, raising=False)
    state = ["--data_dir", str(tmp_path / "state")]
    # Auth without a token for the services' own calls to each other.
    assert main(["serve", "all", *state, "--auth-tokens-file", str(tokens_file)]) == 2
    assert "--service-token-file" in capsys.readouterr().err
    # TLS without a CA for those calls to verify each other with.
    tls = ["--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key)]
    assert main(["serve", "all", *state, *tls]) == 2
    assert "TUNEWIRE_TLS_CA" in capsys.readouterr().err
    # Mutual TLS without a client certificate for them.
    monkeypatch.setenv("TUNEWIRE_TLS_CA", str(pki["ca"].path))
    assert main(["serve", "all", *state, *tls, "--tls-client-ca", str(pki["ca"].path)]) == 2
    assert "TUNEWIRE_TLS_CERT" in capsys.readouterr().err
    # One health port for three servers.
    assert main(["serve", "all", *state, "--health-port", "0"]) == 2
    assert "--health-port" in capsys.readouterr().err
    assert main(["serve", "all", *state, "--no-such-flag"]) == 2
    assert not (tmp_path / "state").exists()  # refused before anything started
