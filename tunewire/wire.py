"""Protobuf wire-format pieces for messages we encode or walk by hand: the embedder's one-copy
responses and its request reader (services/embedder/servicer.py), and the SDK's zero-copy
reader (clients/embed_wire.py)."""

from __future__ import annotations


def encode_varint(value: int) -> bytes:
    """`value` (>= 0) as a base-128 varint: seven bits a byte, low bits first."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    """The varint at `buf[pos:end]` and the position after it; ValueError if it is cut short."""
    end = len(buf) if end is None else end
    value = shift = 0
    while pos < end and shift < 64:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated or overlong varint")
