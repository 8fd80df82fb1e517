"""Protobuf wire-format pieces for messages we encode or walk by hand: the embedder's one-copy
responses (services/embedder/servicer.py) and the SDK's zero-copy reader (clients/embed_wire.py)."""

from __future__ import annotations


def encode_varint(value: int) -> bytes:
    """`value` (>= 0) as a base-128 varint: seven bits a byte, low bits first."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
