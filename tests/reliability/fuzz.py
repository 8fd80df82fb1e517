"""Hypothesis strategies for tunewire's protobuf requests, built from the message descriptors so
every field of every request is covered, and biased towards what breaks servers: empty and huge
strings, path traversal, NUL bytes, odd Unicode, negative and extreme numbers, unknown enum
values, and (where the fuzz is given them) ids that exist, so that calls get past the lookups."""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

TRAVERSALS = [
    "../../../../etc/passwd",
    "/etc/passwd",
    "..",
    ".",
    "a/../../b",
    "job-../..",
    "ds-../../x",
    "..\\..\\windows",
    "~/.ssh/id_rsa",
    "%2e%2e%2f%2e%2e",
    "/",
    "//x",
    "a\x00b",
    "file:///etc/passwd",
    "org/../../repo",
]
ODD = [
    "",
    " ",
    "\n",
    "\ud7ff\ue000",
    "é" * 50,
    "😀" * 20,
    "\u202e",
    "null",
    "NaN",
    "-1",
    "{}",
    "[]",
    '{"a": ',
    "x" * 5000,
]

_INT_BOUNDS = {
    FieldDescriptor.TYPE_INT32: 31,
    FieldDescriptor.TYPE_SINT32: 31,
    FieldDescriptor.TYPE_SFIXED32: 31,
    FieldDescriptor.TYPE_INT64: 63,
    FieldDescriptor.TYPE_SINT64: 63,
    FieldDescriptor.TYPE_SFIXED64: 63,
}
_UINT_BOUNDS = {
    FieldDescriptor.TYPE_UINT32: 32,
    FieldDescriptor.TYPE_FIXED32: 32,
    FieldDescriptor.TYPE_UINT64: 64,
    FieldDescriptor.TYPE_FIXED64: 64,
}


def strings(known: list[str]) -> st.SearchStrategy[str]:
    choices = [st.sampled_from(TRAVERSALS + ODD), st.text(max_size=60)]
    if known:  # twice: half the strings are real ids and paths, so calls get past lookups
        choices += [st.sampled_from(known)] * 2
    return st.one_of(*choices)


def scalar(field: FieldDescriptor, known: list[str]) -> st.SearchStrategy:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return strings(known)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=256),
            st.sampled_from([b"", b"\xff\xfe\x00", b"a,b\n1,2\n", b'{"a": 1}\n{', b"\x00" * 64]),
        )
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == FieldDescriptor.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(values), st.integers(-5, 1000))
    if t in _INT_BOUNDS:
        bits = _INT_BOUNDS[t]
        return st.one_of(st.integers(-3, 70_000), st.integers(-(2**bits), 2**bits - 1))
    if t in _UINT_BOUNDS:
        return st.integers(0, 2 ** _UINT_BOUNDS[t] - 1)
    raise TypeError(f"no strategy for field type {t} ({field.full_name})")


@st.composite
def message(draw, descriptor: Descriptor, cls, known: list[str], depth: int = 0):
    """An instance of `cls` with a random subset of its fields set (one member per oneof)."""
    msg = cls()
    chosen_oneofs = {
        o.name: draw(st.sampled_from([f.name for f in o.fields])) for o in descriptor.oneofs
    }
    for field in descriptor.fields:
        if (
            field.containing_oneof is not None
            and chosen_oneofs[field.containing_oneof.name] != field.name
        ):
            continue
        if not draw(st.booleans()):
            continue
        repeated = field.is_repeated
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3 or field.message_type.full_name.startswith("google.protobuf"):
                continue
            sub_cls = type(getattr(msg, field.name).add() if repeated else getattr(msg, field.name))
            if repeated:
                getattr(msg, field.name).pop()
            sub = message(field.message_type, sub_cls, known, depth + 1)
            if repeated:
                for value in draw(st.lists(sub, max_size=3)):
                    getattr(msg, field.name).add().CopyFrom(value)
            else:
                getattr(msg, field.name).CopyFrom(draw(sub))
        elif repeated:
            getattr(msg, field.name).extend(draw(st.lists(scalar(field, known), max_size=6)))
        else:
            setattr(msg, field.name, draw(scalar(field, known)))
    return msg


def requests(cls, known: list[str]) -> st.SearchStrategy:
    return message(cls.DESCRIPTOR, cls, known)
