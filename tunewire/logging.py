"""structlog configuration shared by every service and the CLI.

Console rendering on a terminal, JSON lines elsewhere (a cluster); context bound per request
through contextvars (`merge_contextvars` first). Standard-library logs (grpc, transformers) go
through the same processors so there is one format.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import structlog

_configured = False


def _not_a_cancellation(record: logging.LogRecord) -> bool:
    """Drops a record whose exception is a task's cancellation: grpc.aio and asyncio log the
    handlers a stopping server cancels (a process ending while a stream is open) with their
    traceback, and a cancelled call is no error."""
    return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


def configure(level: str | None = None, json: bool | None = None, stream=None) -> None:
    """Configure structlog and stdlib logging once. `TUNEWIRE_LOG_FORMAT=json|console` and
    `TUNEWIRE_LOG_LEVEL` override the defaults."""
    global _configured
    stream = stream or sys.stderr
    level = (level or os.environ.get("TUNEWIRE_LOG_LEVEL", "INFO")).upper()
    if json is None:
        fmt = os.environ.get("TUNEWIRE_LOG_FORMAT")
        json = (fmt == "json") if fmt else not stream.isatty()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([structlog.processors.format_exc_info] if json else []),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_not_a_cancellation)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_tunewire", False):
            root.removeHandler(h)
    handler._tunewire = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("urllib3", "filelock", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    _configured = True


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
