"""A long-lived client follows its rotated certificate files (tunewire/reloading_channel.py).

The server here requires client certificates (mutual TLS) and answers who presented which one
(the certificate's common name), so a test can tell which certificate a call really used. Its
client CA file is rotated too: once it trusts only the new CA, a fresh client holding the old
certificate is refused, while the client made before the rotation keeps working.
"""

from __future__ import annotations

import shutil
import time

import grpc
import pytest
from structlog.testing import capture_logs

from clients.sdk import connect
from tests.reliability.certs import CA, _atomic_write
from tests.reliability.conftest import code_of
from tunewire.server import ServerSecurity, ServerSettings, Service, create_server
from tunewire.tls import ClientSecurity, ServerTLS

WHO = "/tunewire.test.Who/Name"
WATCH = "/tunewire.test.Who/Watch"


def _common_name(context: grpc.ServicerContext) -> bytes:
    return context.auth_context()["x509_common_name"][0]


def _who(_request: bytes, context: grpc.ServicerContext) -> bytes:
    return _common_name(context)


def _watch(request: bytes, context: grpc.ServicerContext):
    """The caller's common name, as many times as the request says, 0.1 s apart."""
    name = _common_name(context)
    for _ in range(int(request or b"1")):
        time.sleep(0.1)
        yield name


def _add(_servicer, server: grpc.Server) -> None:
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "tunewire.test.Who",
                {
                    "Name": grpc.unary_unary_rpc_method_handler(_who),
                    "Watch": grpc.unary_stream_rpc_method_handler(_watch),
                },
            )
        ]
    )


@pytest.fixture
def rotation(tmp_path):
    """A server trusting client CA 1 from a file that the test may rotate, and client
    certificate files (from CA 1, common name client-1) at fixed paths."""
    server_ca, ca1, ca2 = (
        CA(tmp_path / "sca", "server CA"),
        CA(tmp_path / "ca1", "client CA 1"),
        CA(tmp_path / "ca2", "client CA 2"),
    )
    server = server_ca.issue("server")
    live = tmp_path / "live"
    live.mkdir()
    client_ca = live / "client-ca.pem"
    shutil.copy(ca1.path, client_ca)
    ca1.issue("client", common="client-1", server=False, directory=live)
    running = create_server(
        [Service("tunewire.test.Who", None, _add)],
        ServerSettings(security=ServerSecurity(tls=ServerTLS(server.cert, server.key, client_ca))),
    )
    running.set_ready("tunewire.test.Who")
    old = ca1.issue("old-client", common="client-1", server=False, directory=tmp_path)
    yield {
        "address": f"127.0.0.1:{running.port}",
        "server_ca": server_ca.path,
        "client_ca": client_ca,
        "live": live,
        "ca2": ca2,
        "old": old,
    }
    running.stop(None).wait()


def _rotate(r) -> None:
    """The operator's rotation: the server now trusts only CA 2, the client's files hold a
    certificate from CA 2 (common name client-2). Then the watchers' 1 s throttle passes."""
    _atomic_write(r["client_ca"], r["ca2"].path.read_bytes())
    r["ca2"].issue("client", common="client-2", server=False, directory=r["live"])
    time.sleep(1.1)


def _client(r, cert, key) -> grpc.Channel:
    return connect(r["address"], ClientSecurity(ca=r["server_ca"], cert=cert, key=key))


def test_long_lived_client_uses_the_rotated_certificate(rotation):
    r = rotation
    channel = _client(r, r["live"] / "client.crt", r["live"] / "client.key")
    who = channel.unary_unary(WHO)  # made once, like a stub's method
    assert who(b"", timeout=5) == b"client-1"
    with capture_logs() as logs:
        _rotate(r)
        # The server no longer accepts the old certificate on a new connection...
        stale = _client(r, r["old"].cert, r["old"].key)
        assert (
            code_of(lambda: stale.unary_unary(WHO)(b"", timeout=5)) == grpc.StatusCode.UNAVAILABLE
        )
        # ...and the client made before the rotation carries on with the new one.
        assert who(b"", timeout=5) == b"client-2"
        assert who.with_call(b"", timeout=5)[0] == b"client-2"
        assert who.future(b"", timeout=5).result() == b"client-2"
    events = [e["event"] for e in logs]
    assert events.count("client certificates reloaded") == 1  # cert and key: one rebuild
    assert "previous client channel closed" in events
    stale.close()
    channel.close()


def test_a_stream_in_flight_finishes_on_the_previous_channel(rotation):
    r = rotation
    channel = _client(r, r["live"] / "client.crt", r["live"] / "client.key")
    watch, who = channel.unary_stream(WATCH), channel.unary_stream(WATCH)
    with capture_logs() as logs:
        stream = watch(b"20", timeout=30)  # about 2 s of messages, begun with client-1
        first = next(stream)
        _rotate(r)
        assert next(who(b"1", timeout=5)) == b"client-2"  # a new call: the new channel
        events = [e["event"] for e in logs]
        assert "client certificates reloaded" in events
        assert "previous client channel closed" not in events  # the stream still runs there
        rest = list(stream)
        # Closed by a thread of its own once the stream ends: wait for it while logs are captured.
        deadline = time.monotonic() + 5
        while "previous client channel closed" not in [e["event"] for e in logs]:
            assert time.monotonic() < deadline, "the previous channel was never closed"
            time.sleep(0.05)
    assert first == b"client-1" and rest == [b"client-1"] * 19
    channel.close()


def test_a_broken_rotation_keeps_the_working_channel(rotation, tmp_path):
    r = rotation
    ca = tmp_path / "server-ca.pem"
    shutil.copy(r["server_ca"], ca)
    channel = connect(
        r["address"],
        ClientSecurity(ca=ca, cert=r["live"] / "client.crt", key=r["live"] / "client.key"),
    )
    who = channel.unary_unary(WHO)
    assert who(b"", timeout=5) == b"client-1"
    with capture_logs() as logs:
        # A CA file with no certificate, then a certificate whose key was not written: gRPC
        # would build channels from both and fail every handshake; the client keeps its own.
        _atomic_write(ca, b"not a certificate\n")
        time.sleep(1.1)
        assert who(b"", timeout=5) == b"client-1"
        _atomic_write(ca, r["server_ca"].read_bytes())
        other = r["ca2"].issue("other", common="client-2", server=False, directory=tmp_path)
        shutil.copy(other.cert, r["live"] / "client.crt")
        time.sleep(1.1)
        assert who(b"", timeout=5) == b"client-1"
        failures = [e for e in logs if e["event"].startswith("client certificate reload failed")]
        assert len(failures) == 2, logs
        # The key arrives: the pair is whole, the next call uses it.
        shutil.copy(other.key, r["live"] / "client.key")
        _atomic_write(r["client_ca"], r["ca2"].path.read_bytes())
        time.sleep(1.1)
        assert who(b"", timeout=5) == b"client-2"
    channel.close()
