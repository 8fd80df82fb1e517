"""The message-size limits and the client channel options that every server and client share.

Apart from `tunewire.server` so that a client (the SDK, the CLI against a running trainer)
takes them without importing the server's stack: health, reflection, the interceptors and
metrics (~0.08 s of a CLI run's start)."""

from __future__ import annotations

from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Chunks of large streams stay well under the message limit.
STREAM_CHUNK_BYTES = 2 * 1024 * 1024


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Client channel options matching the servers' limits."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
