"""tunewire.clients.embed_wire: the zero-copy StreamEmbed deserializer gives exactly what protobuf
parses, for the server's messages, protobuf's own, odd but valid ones (merges, unknown fields,
unpacked shapes), and broken ones (the same error)."""

import random

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from services.embedder.servicer import encode_response
from tunewire.clients.embed_wire import split_response
from tunewire.tensors import from_data, to_proto
from tunewire.v1 import embedder_pb2
from tunewire.wire import encode_varint

FIELDS = dict(cache_hits=3, cache_misses=1, fingerprint="ab" * 32, offset=7, last=True)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    """One field on the wire; `payload` is the value's bytes (length-prefixed for wire 2)."""
    prefix = encode_varint(len(payload)) if wire == 2 else b""
    return encode_varint(number << 3 | wire) + prefix + payload


def _assert_same_as_protobuf(buf: bytes) -> None:
    expected = embedder_pb2.EmbedResponse.FromString(buf)
    head, data = split_response(buf)
    assert bytes(data) == expected.embeddings.data
    assert data.readonly
    assert head.HasField("embeddings") == expected.HasField("embeddings")
    if expected.HasField("embeddings"):  # clearing `data` of an absent one would set it
        expected.embeddings.data = b""
    assert head == expected
    assert head.SerializeToString() == expected.SerializeToString()  # unknown fields too


@pytest.mark.parametrize(
    "dtype, rows, dim",
    [(np.float32, 3, 48), (np.float16, 300, 48), (np.float16, 0, 384), (np.float16, 512, 2048)],
)
def test_the_servers_responses_split_into_the_parsed_message_and_a_view_of_the_vectors(
    dtype, rows, dim
):
    vectors = np.random.default_rng(0).standard_normal((rows, dim)).astype(dtype)
    buf = encode_response(vectors, **FIELDS)
    _assert_same_as_protobuf(buf)
    head, data = split_response(buf)
    got = from_data(head.embeddings, data)
    np.testing.assert_array_equal(got, vectors)
    assert not got.flags.writeable
    assert rows == 0 or np.shares_memory(got, np.frombuffer(buf, np.uint8))  # no copy


@pytest.mark.parametrize("dtype, dim", [(np.float16, 384), (np.float32, 7)])
def test_a_response_of_gathered_rows_is_the_response_of_those_vectors(dtype, dim):
    """`rows`: the rows are gathered straight into the message, in their order, repeats and
    all: the same bytes as the response of the gathered array."""
    kept = np.random.default_rng(1).standard_normal((50, dim)).astype(dtype)
    rows = np.array([49, 0, 7, 7, 3], dtype=np.intp)
    assert encode_response(kept, rows, **FIELDS) == encode_response(kept[rows], **FIELDS)
    empty = encode_response(kept, rows[:0], **FIELDS)
    assert empty == encode_response(kept[:0], **FIELDS)
    big_endian = kept.astype(kept.dtype.newbyteorder(">"))
    assert encode_response(big_endian, rows, **FIELDS) == encode_response(kept[rows], **FIELDS)


@pytest.mark.parametrize(
    "message",
    [
        embedder_pb2.EmbedResponse(),
        embedder_pb2.EmbedResponse(fingerprint="only small fields", last=True),
        embedder_pb2.EmbedResponse(embeddings=to_proto(np.ones((2, 3), np.float32)), **FIELDS),
        embedder_pb2.EmbedResponse(embeddings=to_proto(np.ones((0, 3), np.float16))),
        embedder_pb2.EmbedResponse(cache_hits=-1, offset=2**62, embeddings={"shape": [2**40]}),
    ],
)
def test_protobufs_own_serialisation(message):
    _assert_same_as_protobuf(message.SerializeToString())


def test_repeated_embeddings_merge_and_the_last_data_wins():
    first = _field(1, 2, _field(1, 0, b"\x02") + _field(2, 2, b"\x04") + _field(3, 2, b"old!"))
    second = _field(1, 2, _field(2, 2, b"\x02") + _field(3, 2, b"new bytes"))
    emptied = _field(1, 2, _field(3, 2, b""))
    for buf in [
        first + second,
        second + first,
        first + second + emptied,
        first + _field(4, 2, b"fp") + second,
        first * 3,
    ]:
        _assert_same_as_protobuf(buf)


def test_unknown_fields_and_unpacked_shapes_are_kept():
    unknown = (
        _field(99, 0, encode_varint(300))
        + _field(100, 1, b"\x01" * 8)
        + _field(101, 5, b"\x02" * 4)
        + _field(2**29 - 1, 2, b"later version")
    )
    tensor = (
        _field(1, 0, b"\x01")
        + _field(2, 0, b"\x02")
        + _field(2, 0, b"\x03")
        + unknown
        + _field(3, 2, b"\x00" * 24)
        + _field(7, 2, b"after data")
    )
    _assert_same_as_protobuf(unknown + _field(1, 2, tensor) + unknown + _field(6, 0, b"\x01"))


@pytest.mark.parametrize(
    "buf",
    [
        _field(1, 0, b"\x05"),  # embeddings with a varint wire type: protobuf keeps it as unknown
        _field(1, 2, _field(3, 0, b"\x05")),  # so is a varint `data`
        _field(1, 2, _field(3, 5, b"abcd")) + _field(1, 2, _field(3, 2, b"kept")),
        _field(9, 3, b"") + _field(9, 4, b""),  # an (empty) group: parsed by protobuf itself
    ],
)
def test_unexpected_wire_types_fall_back_to_protobuf(buf):
    _assert_same_as_protobuf(buf)


@pytest.mark.parametrize(
    "buf",
    [
        b"\x0a",  # a tag and no length
        b"\x0a\x05\x1a\x10abc",  # data longer than its tensor
        _field(1, 2, b"\x1a\x05ab"),  # data longer than the message
        b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # an endless varint
        _field(4, 2, b"\xff\xfe"),  # fingerprint that is not UTF-8
        b"\x00\x01",  # field number 0
    ],
)
def test_malformed_messages_raise_protobufs_error(buf):
    with pytest.raises(DecodeError):
        embedder_pb2.EmbedResponse.FromString(buf)
    with pytest.raises(DecodeError):
        split_response(buf)


def test_random_mutations_of_a_response_agree_with_protobuf():
    """Bytes flipped, cut and repeated: either both parse to the same thing or both fail."""
    rng = random.Random(0)
    base = encode_response(np.arange(24, dtype=np.float16).reshape(4, 6), **FIELDS)
    for _ in range(3000):
        buf = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            kind, at = rng.randrange(3), rng.randrange(len(buf) + 1)
            if kind == 0:
                buf[at : at + 1] = bytes([rng.randrange(256)])
            elif kind == 1:
                del buf[at:]
            else:
                buf[at:at] = buf[at : at + rng.randint(1, 8)]
        buf = bytes(buf)
        try:
            embedder_pb2.EmbedResponse.FromString(buf)
        except DecodeError:
            with pytest.raises(DecodeError):
                split_response(buf)
        else:
            _assert_same_as_protobuf(buf)
