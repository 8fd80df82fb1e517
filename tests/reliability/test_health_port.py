"""The plaintext health port (`ServerSecurity.health_port`) beside a TLS server: the kubelet's
gRPC probes speak plaintext only, so this is what lets a TLS service turn ready in Kubernetes.
It answers grpc.health.v1 and nothing else, from the same health state as the main port."""

from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.reliability.conftest import code_of
from tunewire.server import ServerSecurity, ServerSettings, Service, create_server
from tunewire.tls import ClientSecurity, ServerTLS

NAME = "tunewire.test.Hold"
HOLD = f"/{NAME}/Hold"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _add(release: threading.Event, entered: threading.Event):
    """A service whose one RPC holds until `release`, so a drain has a call to wait for."""

    def hold(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        entered.set()
        release.wait(10)
        return b"done"

    def add(_servicer, server: grpc.Server) -> None:
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    NAME, {"Hold": grpc.unary_unary_rpc_method_handler(hold)}
                )
            ]
        )

    return add


@pytest.fixture
def server(pki):
    release, entered = threading.Event(), threading.Event()
    running = create_server(
        [Service(NAME, None, _add(release, entered))],
        ServerSettings(
            security=ServerSecurity(
                tls=ServerTLS(pki["server"].cert, pki["server"].key), health_port=0
            )
        ),
    )
    tls = ClientSecurity(ca=pki["ca"].path).channel(f"127.0.0.1:{running.port}", [])
    plain = grpc.insecure_channel(f"127.0.0.1:{running.health_port}")
    yield {"running": running, "tls": tls, "plain": plain, "release": release, "entered": entered}
    release.set()
    running.stop(None).wait(5)
    tls.close()
    plain.close()


def _status(channel: grpc.Channel, service: str = NAME) -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        .status
    )


def test_health_port_reports_what_the_tls_port_reports(server):
    running, tls, plain = server["running"], server["tls"], server["plain"]
    assert running.health_port not in (None, 0, running.port)
    for service in (NAME, ""):
        assert _status(plain, service) == _status(tls, service) == NOT_SERVING
    running.set_ready(NAME)
    for service in (NAME, ""):
        assert _status(plain, service) == _status(tls, service) == SERVING
    running.set_ready(NAME, False)
    assert _status(plain) == _status(tls) == NOT_SERVING


def test_health_port_serves_health_only_and_the_main_port_refuses_plaintext(server):
    running, plain = server["running"], server["plain"]
    hold = plain.unary_unary(HOLD)
    assert code_of(lambda: hold(b"", timeout=5)) == grpc.StatusCode.UNIMPLEMENTED
    reflect = reflection_pb2_grpc.ServerReflectionStub(plain).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    assert code_of(lambda: list(reflect)) == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as main_plain:
        assert code_of(lambda: _status(main_plain)) == grpc.StatusCode.UNAVAILABLE
    server["release"].set()
    assert server["tls"].unary_unary(HOLD)(b"", timeout=5) == b"done"  # served over TLS


def test_drain_is_seen_on_the_health_port(server):
    """SIGTERM's drain: while a call is in flight, the health port answers NOT_SERVING (not a
    refused connection), and it closes once the main server has stopped."""
    running, plain = server["running"], server["plain"]
    running.set_ready(NAME)
    assert _status(plain) == SERVING
    in_flight = server["tls"].unary_unary(HOLD).future(b"", timeout=10)
    assert server["entered"].wait(5)
    stopped = running.stop(grace=10)
    assert _status(plain) == _status(plain, "") == NOT_SERVING
    assert not stopped.is_set()
    server["release"].set()
    assert in_flight.result() == b"done"
    assert stopped.wait(5)
    assert code_of(lambda: _status(plain)) == grpc.StatusCode.UNAVAILABLE


def test_health_port_flag_and_env(monkeypatch):
    import argparse

    from tunewire.server_flags import add_security_flags, security_from_args

    def parsed(argv: list[str]) -> ServerSecurity:
        p = argparse.ArgumentParser()
        add_security_flags(p)
        return security_from_args(p.parse_args(argv))

    monkeypatch.delenv("TUNEWIRE_HEALTH_PORT", raising=False)
    assert parsed([]).health_port is None
    assert parsed(["--health-port", "50060"]).health_port == 50060
    monkeypatch.setenv("TUNEWIRE_HEALTH_PORT", "50061")
    assert parsed([]).health_port == 50061
