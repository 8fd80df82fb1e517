"""Epoch seconds (how records store time) to protobuf Timestamps (how the contract sends it)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp


def to_timestamp(seconds: float) -> Timestamp | None:
    """None for 0 (unset), so an unset time stays unset on the wire."""
    if not seconds:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts
