"""The shared log format: one JSON line per record, and no traceback for a cancelled call."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from tunewire.logging import configure


def _log_exception(exc: BaseException, event: str) -> None:
    try:
        raise exc
    except BaseException:
        logging.getLogger("grpc._cython.cygrpc").exception(event)


def test_a_cancelled_calls_traceback_is_dropped_and_a_real_error_kept():
    """A stopping gRPC server logs the handlers it cancels with their traceback (seen as a
    'Traceback' in a CLI's one-line error); a real exception keeps its traceback."""
    out = io.StringIO()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        configure(json=True, stream=out)
        _log_exception(asyncio.CancelledError(), "cancelled")
        _log_exception(ValueError("broken"), "broken")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["broken"]
    assert "ValueError: broken" in records[0]["exception"]
