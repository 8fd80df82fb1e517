"""Protobuf wire-format pieces for messages we encode or walk by hand: the embedder's one-copy
responses and its request reader (services/embedder/servicer.py), the SDK's zero-copy reader
(clients/embed_wire.py), and the one form of a request's texts that the SDK sends and the
embedder keys whole answers by (`embed_request`)."""

from __future__ import annotations

from collections.abc import Sequence

from tunewire.v1 import embedder_pb2


def embed_request(
    encoder: embedder_pb2.EncoderSpec | None, texts: Sequence[str]
) -> embedder_pb2.EmbedRequest:
    """An EmbedRequest for `texts`: joined by NUL in `joined` when none holds a NUL (and all
    encode as UTF-8), else as records in `texts`. One join costs a client a fraction of what
    building and serialising a protobuf record per text does (thousands of short texts a
    request). Serialised without an encoder, it is the texts' wire form (fingerprint.encode_texts).
    The fields are set one by one: protobuf copies a sub-message passed to the constructor
    through a serialisation of it."""
    if texts and "\0" not in "".join(texts):
        try:
            data = "\0".join(texts).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: protobuf's records say what is wrong
            pass
        else:
            request = embedder_pb2.EmbedRequest()
            if encoder is not None:
                request.encoder.CopyFrom(encoder)
            request.joined.utf8 = data
            request.joined.count = len(texts)
            return request
    return embedder_pb2.EmbedRequest(encoder=encoder, texts=texts)


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
