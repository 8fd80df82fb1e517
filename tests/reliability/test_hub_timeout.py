"""A Hub that accepts connections and never answers: the gateway's client times out, retries and
gives up with UNAVAILABLE instead of holding an upload worker forever. (500s, 429s and dropped
connections are covered by tests/hub_gateway/test_grpc.py and test_hub_client.py.)"""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import pytest

from services.hub_gateway.hub_client import DEFAULT_HTTP_TIMEOUT_S, HubClient, LocalFile
from tunewire.errors import Unavailable


@pytest.fixture
def silent_hub():
    """A TCP server that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}", held
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_silent_hub_times_out_and_gives_up_unavailable(silent_hub, tmp_path, monkeypatch):
    from tests.hubserver import allow_test_hub

    allow_test_hub(monkeypatch)
    endpoint, held = silent_hub
    (tmp_path / "config.json").write_text("{}")
    files = [
        LocalFile("config.json", tmp_path / "config.json", 2, hashlib.sha256(b"{}").hexdigest())
    ]
    delays: list[float] = []
    client = HubClient(endpoint, "hf_x", max_attempts=3, sleep=delays.append, http_timeout_s=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable) as info:
            client.upload("org/silent", files)
    finally:
        client = HubClient(endpoint, "hf_x")  # put the default timeout back for other tests
    assert info.value.reason == "HUB_UNAVAILABLE" and "Timeout" in str(info.value)
    assert len(delays) == 2 and len(held) >= 3  # three attempts, each on the wire
    assert time.monotonic() - started < 20
    # Every gateway's client has a finite timeout, never huggingface_hub's default of none.
    from huggingface_hub import get_session

    assert get_session().timeout.read == DEFAULT_HTTP_TIMEOUT_S
