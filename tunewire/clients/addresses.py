"""Service addresses to gRPC channels, and sharding requests across embedder replicas.

In a cluster each service sits behind a *headless* Service, so its DNS name resolves to every
ready pod. A `dns:///` target makes the gRPC client resolve all of them, and the `round_robin`
policy spreads calls over them (the default, `pick_first`, would pin one pod). Servers close each
connection after `grpc.max_connection_age_ms` (tunewire/server.py), which makes the client resolve
again, so new replicas start taking calls and removed ones stop.

The embedder is different: its replicas each own an LMDB cache on their own volume (k8s/base/
embedder.yaml), so spreading texts at random would compute and store the same text on every
replica. `shard_for` sends a cache key to one replica chosen by rendezvous (highest random weight)
hashing: every replica gets a score hash(replica, key) and the highest score wins. We chose it over
modulo hashing because when a replica is added or removed only the keys whose winner changed move
(about 1/n of them), so the other caches stay warm; and over a consistent-hash ring because it
needs no ring, no virtual nodes and no shared state: any client with the same replica list picks
the same replica, whatever the order of the list. Use the replicas' stable names (StatefulSet pods:
embedder-0.embedder.<ns>.svc.cluster.local:50051), not pod IPs, which change on restart.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from typing import Any

from tunewire.channel_limits import channel_options

__all__ = ["channel_target", "channel_options_for", "shard_for", "resolve_replicas"]

# Name-resolver schemes gRPC's core understands; anything else is not a gRPC target.
_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock")


def _split_host_port(hostport: str, address: str) -> tuple[str, int]:
    if hostport.startswith("["):  # [v6]:port
        host, sep, rest = hostport[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"address {address!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = hostport.rpartition(":")
        if not sep or not host:
            raise ValueError(f"address {address!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"address {address!r}: put an IPv6 host in brackets, [HOST]:PORT")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"address {address!r}: port must be a number in 1..65535")
    return host, int(port_text)


def channel_target(address: str) -> str:
    """The gRPC target for a service address.

    `HOST:PORT` (a name or an IP, `[v6]:PORT` for IPv6) stays as it is: gRPC resolves it with DNS.
    `dns:///name:port` and `dns://authority/name:port` stay as they are; `dns:name:port` becomes
    `dns:///name:port`. Other gRPC schemes (`ipv4:`, `ipv6:`, `unix:` ...) pass through. Anything
    else (`http://...`, no port) is a ValueError naming the address.
    """
    if not isinstance(address, str) or not address.strip():
        raise ValueError("address is empty")
    address = address.strip()
    scheme, colon, rest = address.partition(":")
    if colon and scheme.lower() in _SCHEMES:
        scheme = scheme.lower()
        if scheme != "dns":
            if not rest:
                raise ValueError(f"address {address!r}: nothing after {scheme}:")
            return f"{scheme}:{rest}"
        if rest.startswith("//"):
            authority, slash, endpoint = rest[2:].partition("/")
            if not slash:
                raise ValueError(f"address {address!r}: expected dns:///HOST:PORT")
            _split_host_port(endpoint, address)
            return f"dns://{authority}/{endpoint}"
        _split_host_port(rest, address)
        return f"dns:///{rest}"
    if "://" in address:
        raise ValueError(
            f"address {address!r}: scheme {address.split('://')[0]!r} is not a gRPC "
            f"target; use HOST:PORT or dns:///HOST:PORT"
        )
    _split_host_port(address, address)
    return address


def channel_options_for(address: str) -> list[tuple[str, Any]]:
    """Channel options for `address`: the servers' message limits and keepalive, plus
    `round_robin` load balancing for `dns:` targets (a headless Service resolves to every
    replica)."""
    options = list(channel_options())
    if channel_target(address).startswith("dns:"):
        options.append(("grpc.lb_policy_name", "round_robin"))
    return options


def _score(replica: str, key: bytes) -> int:
    # blake2b over a length-prefixed replica name, so ("ab", b"c") and ("a", b"bc") never collide.
    name = replica.encode()
    digest = hashlib.blake2b(len(name).to_bytes(4, "big") + name + key, digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_for(key: bytes, replicas: list[str]) -> str:
    """The replica that owns cache key `key`, by rendezvous hashing (see the module docstring).

    Deterministic across processes and independent of the order of `replicas`; removing a replica
    moves only the keys it owned. Duplicate names count once.
    """
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise TypeError(f"key must be bytes, not {type(key).__name__}")
    if not replicas:
        raise ValueError("no replicas to shard over")
    key = bytes(key)
    # max() keeps the first of equal scores (a 64-bit collision): over a sorted list that is the
    # smallest name, so the order of `replicas` never matters.
    return max(sorted(set(replicas)), key=lambda r: _score(r, key))


def resolve_replicas(address: str) -> list[str]:
    """Every address that `address`'s name resolves to now, as sorted `IP:PORT` targets (IPv6 in
    brackets): the pods behind a headless Service. For ad-hoc use; shard over stable names."""
    target = channel_target(address)
    if target.startswith("dns://"):
        target = target[len("dns://") :].partition("/")[2]
    elif target.partition(":")[0] in _SCHEMES:
        raise ValueError(f"address {address!r}: only HOST:PORT and dns: addresses resolve")
    host, port = _split_host_port(target, address)
    found = set()
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        ip = sockaddr[0]
        found.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(found)
