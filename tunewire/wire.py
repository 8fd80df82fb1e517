"""Protobuf wire-format pieces for messages we encode or walk by hand: the embedder's one-copy
responses and its request reader (services/embedder/servicer.py), the SDK's zero-copy reader
(tunewire/clients/embed_wire.py), and the one form of a request's texts that the SDK sends and the
embedder keys whole answers by (`embed_request`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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
    together = "\0".join(texts)  # one join, the NUL check counted on it
    if texts and together.count("\0") == len(texts) - 1:
        try:
            data = together.encode("utf-8")
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


# Texts a StreamEmbed message carries at most, in bytes: well under the 64 MiB message limit,
# with room for the encoder spec (70 texts of 1 MiB in one message went past it).
DEFAULT_REQUEST_BYTES = 16 << 20


def text_batches(
    texts: Sequence[str], max_texts: int, max_bytes: int = DEFAULT_REQUEST_BYTES
) -> Iterator[tuple[int, int]]:
    """(start, end) of consecutive batches of `texts`: at most `max_texts` texts and
    `max_bytes` of UTF-8 (with a few bytes of framing each) a batch, and at least one text, so
    a single text over `max_bytes` goes alone (the server then says it is too long).

    A batch of `max_texts` whose characters fit even at 4 bytes each (UTF-8's most) is taken
    whole, its size summed in C: a step in Python per text was a tenth of a warm stream's
    client time (thousands of short texts a request). Only a batch near `max_bytes` is sized
    text by text."""
    start, count = 0, len(texts)
    while start < count:
        end = min(start + max_texts, count)
        window = texts[start:end]
        if 4 * sum(map(len, window)) + _FRAMING * len(window) <= max_bytes:
            yield start, end
            start = end
            continue
        size, end = 0, start
        for text in window:
            length = (
                len(text) if text.isascii() else len(text.encode("utf-8", "replace"))
            ) + _FRAMING
            if end > start and size + length > max_bytes:
                break
            size += length
            end += 1
        yield start, end
        start = end


# Bytes a text adds to a request beside its own, at most (a record's tag and length).
_FRAMING = 6


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
