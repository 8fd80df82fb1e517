"""Training jobs as durable resources: the record of each job and its event log.

Each job lives in `<data_dir>/jobs/<id>/`: `job.json` (the record, replaced atomically on every
change) and `events.jsonl` (append-only, one event a line, sequence numbers from 0), kept by
`tunewire.records`. The runner (`runner.py`) is the only writer; the servicer reads and follows.

A job belongs to the principal that created it (`tunewire.auth`): reading one checks the caller
being served (unless told whom to check), and another principal's job is NOT_FOUND, word for word
as for a missing id; admin sees all. Request ids are per principal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.trainer.context import Event, event_from_dict
from tunewire.auth import Principal, current_principal
from tunewire.errors import NotFound
from tunewire.records import RecordStore

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
    "CANCELLED",
)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


@dataclass
class JobRecord:
    id: str
    state: str
    config: dict  # resolved, every default written
    dataset_id: str = ""
    training_set_id: str = ""
    validation_set_id: str = ""
    test_set_id: str = ""
    request_id: str = ""
    upload_to: str = ""
    upload_id: str = ""
    metrics: list[dict] = field(default_factory=list)
    artifact_path: str = ""
    error: str = ""
    create_time: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    attempts: int = 0
    summary: dict = field(default_factory=dict)
    owner: str = ""  # the principal that created it (tunewire.auth; "" without tokens)
    # What the request with `request_id` asked for (request_digest): a reuse must match it.
    request_digest: str = ""


@dataclass
class StoredEvent:
    """An event as the job's log keeps it: its place, its time, and the event's own dict."""

    sequence: int
    time: float
    kind: str  # state | progress | metrics | log
    data: dict

    def event(self) -> Event:
        return event_from_dict(self.kind, self.data)


class JobStore:
    """Job records and event logs on disk, with in-memory followers for Watch."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._store: RecordStore[JobRecord, StoredEvent] = RecordStore(
            self.root,
            "job.json",
            lambda d: JobRecord(**d),
            lambda d: StoredEvent(**d),
            lambda rec: rec.state in TERMINAL,
        )
        # Held around a change that must look like one to a follower (a state and its event).
        self.lock = self._store.lock

    def create(self, rec: JobRecord) -> JobRecord:
        return self._store.create(rec)

    def discard(self, job_id: str) -> None:
        """Remove a job whose creation did not complete (its first event could not be written)."""
        self._store.discard(job_id)

    def get(self, job_id: str, principal: Principal | None = None) -> JobRecord:
        """The job, if `principal` (default: the caller being served; everyone's outside a call)
        may see it."""
        rec = self._store.get(job_id)
        if rec is None or not (principal or current_principal()).owns(rec.owner):
            raise NotFound(f"no job {job_id!r}", field="id")
        return rec

    def find_by_request(self, owner: str, request_id: str) -> JobRecord | None:
        """`owner`'s job made by the request with this id, if any."""
        if not request_id:
            return None
        return next(
            (j for j in self._store.all() if j.request_id == request_id and j.owner == owner),
            None,
        )

    def all(self) -> list[JobRecord]:
        """Every principal's jobs (the runner's view: queue limits count them all)."""
        return sorted(self._store.all(), key=lambda j: (j.create_time, j.id))

    def visible(self, principal: Principal | None = None) -> list[JobRecord]:
        """The jobs `principal` (default: the caller being served) may see."""
        principal = principal or current_principal()
        return [j for j in self.all() if principal.owns(j.owner)]

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        return self._store.update(job_id, **changes)

    def append_event(self, job_id: str, event: Event) -> StoredEvent:
        return self._store.append(
            job_id, lambda seq: StoredEvent(seq, time.time(), event.kind, event.to_dict())
        )

    def event_count(self, job_id: str) -> int:
        return self._store.count(job_id)

    def follow(
        self, job_id: str, from_sequence: int = 0, alive: Callable[[], bool] = lambda: True
    ) -> Iterator[StoredEvent]:
        """Replay events from `from_sequence`, then wait for new ones until the job ends."""
        self.get(job_id)
        return self._store.follow(job_id, from_sequence, alive)

    async def watch(self, job_id: str, from_sequence: int = 0) -> AsyncIterator[StoredEvent]:
        """`follow` for an event loop (the async WatchJob): waiting holds no thread."""
        await asyncio.to_thread(self.get, job_id)  # NOT_FOUND, or another principal's
        async for event in self._store.watch(job_id, from_sequence):
            yield event

    def work_dir(self, job_id: str) -> Path:
        return self._store.dir(job_id)
