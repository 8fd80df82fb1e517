"""Durable resources: a record per resource, replaced atomically, and an append-only event log.

Long work (a trainer job, a gateway upload) is a resource with an id, a state and a history. Each
lives in `<root>/<id>/`: `<record>.json`, rewritten whole through a temporary file and
`os.replace` (a reader sees the old record or the new one, never half of either), and
`events.jsonl`, one event a line, each with its sequence number, which a watcher replays from any
sequence and then follows live. Records and events are dataclasses; the store keeps them in memory
and on disk and wakes followers when either changes.

Followers on an event loop (the async Watch RPCs of grpc.aio servers) use `watch`, which holds
no thread while it waits: every change also bumps `changes` (tunewire.changes), which they await.

A process killed in the middle of an append leaves a torn last line. On open that tail is cut off
the file (and logged), so the next append starts on a line of its own instead of being glued to
the fragment, which would make it, and every event after it, unreadable at the next restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import structlog

from tunewire.changes import Changes

log = structlog.get_logger(__name__)

EVENTS_FILE = "events.jsonl"


class Record(Protocol):
    id: str


class Sequenced(Protocol):
    sequence: int


R = TypeVar("R", bound=Record)
E = TypeVar("E", bound=Sequenced)


def write_atomic(path: Path, data: dict) -> None:
    """Replace `path` with `data` as JSON; a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_events(path: Path, decode: Callable[[dict], E]) -> list[E]:
    """Every whole event in `path`; a torn or unreadable tail is truncated away (see above)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    events: list[E] = []
    good = 0  # bytes of whole, readable lines
    while good < len(data):
        end = data.find(b"\n", good)
        if end < 0:
            break  # the last line has no newline: the write that made it never finished
        try:
            events.append(decode(json.loads(data[good:end])))
        except (ValueError, TypeError, KeyError):
            break
        good = end + 1
    if good < len(data):
        log.warning(
            "torn tail of an event log cut off",
            path=str(path),
            bytes=len(data) - good,
            events_kept=len(events),
        )
        with path.open("r+b") as fh:
            fh.truncate(good)
    return events


class RecordStore(Generic[R, E]):
    """Records and event logs of one kind of resource under `root`, with followers.

    `record_file` names each resource's record (`job.json`); `decode_record`/`decode_event` build
    the dataclasses back from JSON; `is_terminal(record)` tells a follower to stop once it has
    every event; sequences count from `first_sequence`.
    """

    def __init__(
        self,
        root: Path,
        record_file: str,
        decode_record: Callable[[dict], R],
        decode_event: Callable[[dict], E],
        is_terminal: Callable[[R], bool],
        first_sequence: int = 0,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.record_file = record_file
        self.is_terminal = is_terminal
        self.first_sequence = first_sequence
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self.changes = Changes()
        self._records: dict[str, R] = {}
        self._events: dict[str, list[E]] = {}
        self._closed = False
        for path in sorted(self.root.glob(f"*/{record_file}")):
            try:
                rec = decode_record(json.loads(path.read_text()))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("unreadable record skipped", path=str(path), error=str(exc))
                continue
            self._records[rec.id] = rec
            self._events[rec.id] = read_events(path.parent / EVENTS_FILE, decode_event)

    def dir(self, rec_id: str) -> Path:
        return self.root / rec_id

    # ------------------------------------------------------------------------------- records
    def create(self, rec: R) -> R:
        """Write a new resource's record; it exists (in memory too) only once that worked, so a
        full disk leaves nothing behind that a retry would find."""
        with self.lock:
            self.dir(rec.id).mkdir(parents=True, exist_ok=True)
            try:
                write_atomic(self.dir(rec.id) / self.record_file, dataclasses.asdict(rec))
            except BaseException:
                shutil.rmtree(self.dir(rec.id), ignore_errors=True)
                raise
            self._records[rec.id] = rec
            self._events[rec.id] = []
            self._changed.notify_all()
            self.changes.notify()
        return rec

    def discard(self, rec_id: str) -> None:
        """Forget a resource whose creation could not be completed, on disk and in memory."""
        with self.lock:
            self._records.pop(rec_id, None)
            self._events.pop(rec_id, None)
            shutil.rmtree(self.dir(rec_id), ignore_errors=True)
            self._changed.notify_all()
            self.changes.notify()

    def get(self, rec_id: str) -> R | None:
        with self.lock:
            return self._records.get(rec_id)

    def all(self) -> list[R]:
        with self.lock:
            return list(self._records.values())

    def save(self, rec: R) -> None:
        """Write `rec` (changed in place by the caller) and wake followers."""
        with self.lock:
            write_atomic(self.dir(rec.id) / self.record_file, dataclasses.asdict(rec))
            self._changed.notify_all()
            self.changes.notify()

    def update(self, rec_id: str, **changes: Any) -> R:
        with self.lock:
            rec = self._records[rec_id]
            for key, value in changes.items():
                setattr(rec, key, value)
            self.save(rec)
            return rec

    # -------------------------------------------------------------------------------- events
    def append(self, rec_id: str, make: Callable[[int], E]) -> E:
        """Append the event `make(sequence)` to the resource's log, on disk, then in memory."""
        with self.lock:
            events = self._events[rec_id]
            event = make(self.first_sequence + len(events))
            line = json.dumps(dataclasses.asdict(event)) + "\n"
            with (self.dir(rec_id) / EVENTS_FILE).open("a") as fh:
                fh.write(line)
            events.append(event)
            self._changed.notify_all()
            self.changes.notify()
            return event

    def count(self, rec_id: str) -> int:
        """Events the resource has."""
        with self.lock:
            return len(self._events.get(rec_id, ()))

    def events(self, rec_id: str) -> list[E]:
        with self.lock:
            return list(self._events[rec_id])

    def follow(
        self, rec_id: str, from_sequence: int = 0, alive: Callable[[], bool] = lambda: True
    ) -> Iterator[E]:
        """Replay events from `from_sequence`, then wait for new ones until the resource ends
        (its record terminal and every event yielded), the caller goes away (`alive()` false)
        or the store closes."""
        index = max(0, from_sequence - self.first_sequence)
        while True:
            with self.lock:
                batch = self._events[rec_id][index:]
                if not batch:
                    if self._closed or not alive() or self.is_terminal(self._records[rec_id]):
                        return
                    self._changed.wait(timeout=0.5)
                    continue
            yield from batch
            index += len(batch)

    def _since(self, rec_id: str, index: int) -> tuple[list[E], bool]:
        with self.lock:
            ended = self._closed or self.is_terminal(self._records[rec_id])
            return self._events[rec_id][index:], ended

    async def watch(self, rec_id: str, from_sequence: int = 0) -> AsyncIterator[E]:
        """`follow` for an event loop: the same events, but waiting holds no thread (each look
        at the store is a short step in a worker thread, since writers hold its lock across
        disk writes)."""
        index = max(0, from_sequence - self.first_sequence)
        while True:
            seen = self.changes.version
            batch, ended = await asyncio.to_thread(self._since, rec_id, index)
            for event in batch:
                yield event
            index += len(batch)
            if batch:
                continue  # more may have come while these were sent
            if ended:
                return
            await self.changes.wait(seen, timeout=30.0)

    def close(self) -> None:
        """Release every follower."""
        with self.lock:
            self._closed = True
            self._changed.notify_all()
            self.changes.notify()
