"""tunewire/clients/addresses.py: targets, channel options, rendezvous sharding."""

from __future__ import annotations

import collections
import hashlib
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tunewire.clients.addresses import (
    channel_options_for,
    channel_target,
    resolve_replicas,
    shard_for,
)
from tunewire.server import channel_options


@pytest.mark.parametrize(
    "address, target",
    [
        ("localhost:50051", "localhost:50051"),
        ("10.0.0.7:50052", "10.0.0.7:50052"),
        ("[::1]:50053", "[::1]:50053"),
        (" trainer:50052 ", "trainer:50052"),
        (
            "dns:///embedder.tunewire.svc.cluster.local:50051",
            "dns:///embedder.tunewire.svc.cluster.local:50051",
        ),
        (
            "dns:embedder.tunewire.svc.cluster.local:50051",
            "dns:///embedder.tunewire.svc.cluster.local:50051",
        ),
        ("DNS:///embedder:50051", "dns:///embedder:50051"),
        ("dns://10.96.0.10:53/embedder:50051", "dns://10.96.0.10:53/embedder:50051"),
        ("ipv4:127.0.0.1:1,127.0.0.2:2", "ipv4:127.0.0.1:1,127.0.0.2:2"),
        ("unix:/run/tunewire.sock", "unix:/run/tunewire.sock"),
    ],
)
def test_channel_target(address, target):
    assert channel_target(address) == target


@pytest.mark.parametrize(
    "address",
    [
        "",
        "   ",
        "localhost",
        "localhost:",
        ":50051",
        "localhost:0",
        "localhost:65536",
        "localhost:http",
        "http://trainer:50052",
        "dns:///embedder",
        "dns://embedder:50051",
        "::1:50051",
        "[::1]50051",
        "[nothex]:1",
        "unix:",
    ],
)
def test_channel_target_rejects(address):
    with pytest.raises(ValueError):
        channel_target(address)


def test_channel_options_round_robin_only_for_dns():
    dns = channel_options_for("dns:///embedder.tunewire.svc.cluster.local:50051")
    plain = channel_options_for("127.0.0.1:50051")
    assert ("grpc.lb_policy_name", "round_robin") in dns
    assert all(name != "grpc.lb_policy_name" for name, _ in plain)
    # Both keep the servers' message limits and keepalive.
    for opts in (dns, plain):
        assert set(channel_options()) <= set(opts)
    with pytest.raises(ValueError):
        channel_options_for("http://x:1")


def test_dns_target_with_round_robin_reaches_a_server():
    """The options are ones gRPC accepts, and a dns:/// target reaches a real server."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        address = f"dns:///127.0.0.1:{port}"
        with grpc.insecure_channel(
            channel_target(address), options=channel_options_for(address)
        ) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(None)


REPLICAS = [f"embedder-{i}.embedder.tunewire.svc.cluster.local:50051" for i in range(4)]


def _keys(n):
    return [hashlib.sha256(str(i).encode()).digest() for i in range(n)]


def test_shard_is_deterministic_and_order_independent():
    keys = _keys(500)
    first = [shard_for(k, REPLICAS) for k in keys]
    assert first == [shard_for(k, list(reversed(REPLICAS))) for k in keys]
    assert first == [shard_for(k, REPLICAS + REPLICAS[:2]) for k in keys]
    # A fixed vector: the choice must not change between releases, or every cache goes cold.
    assert [shard_for(bytes([i]), REPLICAS)[:10] for i in range(6)] == PINNED


# Computed once from the algorithm (blake2b-64 of length-prefixed name + key, highest wins).
PINNED = ["embedder-2", "embedder-3", "embedder-3", "embedder-3", "embedder-1", "embedder-1"]


def test_shard_spreads_keys_evenly():
    counts = collections.Counter(shard_for(k, REPLICAS) for k in _keys(4000))
    assert set(counts) == set(REPLICAS)
    for n in counts.values():
        assert 800 < n < 1200, counts


def test_removing_a_replica_moves_only_its_keys():
    keys = _keys(2000)
    before = {k: shard_for(k, REPLICAS) for k in keys}
    gone = REPLICAS[2]
    after = {k: shard_for(k, [r for r in REPLICAS if r != gone]) for k in keys}
    for k in keys:
        if before[k] != gone:
            assert after[k] == before[k]
        else:
            assert after[k] != gone
    # Adding a fifth replica takes about a fifth of the keys, all from the others.
    grown = REPLICAS + ["embedder-4.embedder.tunewire.svc.cluster.local:50051"]
    moved = [k for k in keys if shard_for(k, grown) != before[k]]
    assert all(shard_for(k, grown) == grown[-1] for k in moved)
    assert 0.12 < len(moved) / len(keys) < 0.28


def test_shard_inputs():
    assert shard_for(b"x", ["only:1"]) == "only:1"
    assert shard_for(bytearray(b"x"), REPLICAS) == shard_for(b"x", REPLICAS)
    with pytest.raises(ValueError):
        shard_for(b"x", [])
    with pytest.raises(TypeError):
        shard_for("text", REPLICAS)  # type: ignore[arg-type]


def test_resolve_replicas_localhost():
    found = resolve_replicas("localhost:50051")
    assert "127.0.0.1:50051" in found
    assert found == sorted(set(found))
    assert resolve_replicas("dns:///127.0.0.1:7") == ["127.0.0.1:7"]
    with pytest.raises(ValueError):
        resolve_replicas("unix:/x.sock")
