"""The worker's event stream: JSON lines in a file that the launcher tails.

A file (not a pipe) so that the launcher can re-read it after a restart and a crashed worker's last
words survive. Only rank 0 writes. Kinds: progress, metrics, log, result, error.

Bounded: a job of millions of steps writes about `MAX_PROGRESS` progress lines, one every
`stride(total_steps)` steps and the last, not one a step (the file, the launcher's relay and the
trainer's event log all grew with the steps).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

# Progress lines a job writes at most (about: the last step is always written).
MAX_PROGRESS = 10_000


def stride(total_steps: int) -> int:
    """Steps between two progress lines for a job of `total_steps`."""
    return max(1, -(-int(total_steps) // MAX_PROGRESS))


def keeps(step: int, total_steps: int) -> bool:
    """Whether `step` is one of those reported (every `stride`-th, and the last)."""
    return step % stride(total_steps) == 0 or step >= total_steps


class EventWriter:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.enabled = enabled
        self._fh = path.open("a", buffering=1) if enabled else None

    def write(self, kind: str, **fields: Any) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps({"event": kind, "time": time.time(), **fields}) + "\n")

    def progress(self, **fields: Any) -> None:
        """A step's progress, if it is one of those reported (`keeps`)."""
        if keeps(int(fields.get("step", 0)), int(fields.get("total_steps", 0))):
            self.write("progress", **fields)

    def log(self, message: str) -> None:
        self.write("log", message=message)

    def metrics(self, metrics: list[dict]) -> None:
        self.write("metrics", metrics=metrics)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class EventReader:
    """Yields the complete lines appended to the file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = ""

    def poll(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open() as fh:
            fh.seek(self._offset)
            chunk = fh.read()
            self._offset = fh.tell()
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]
