"""Data sets that end: `DeleteDataset`, and a retention for those no job needs.

A data set belongs to the principal that uploaded it (its id covers the owner, datasets.py), so
deleting is the owner's (or admin's) alone; another principal gets NOT_FOUND, as for a missing
id. A data set a queued or running job reads is never removed. Removal renames the directory
away first, so no reader ever sees half a data set under its id.

Retention runs every `interval_s` (and once at start): among data sets no job record references,
those unused (uploaded or read: meta.json's mtime) for longer than `ttl_s` go, then the least
recently used until they fit in `max_bytes`. A data set a job record references stays as long as
the job record does (a finished job's data sets are what its metrics were computed on).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from services.trainer.datasets import DatasetStore
from tunewire.auth import Principal
from tunewire.errors import FailedPrecondition

log = structlog.get_logger(__name__)

USED_FILE = "meta.json"  # its mtime is the data set's last use
DEFAULT_TTL_S = 7 * 24 * 3600.0
DEFAULT_MAX_UNREFERENCED_BYTES = 10 * 1024**3
DEFAULT_INTERVAL_S = 600.0


@dataclass(frozen=True)
class Retention:
    """0 turns a limit off."""

    ttl_s: float = DEFAULT_TTL_S
    max_bytes: int = DEFAULT_MAX_UNREFERENCED_BYTES
    interval_s: float = DEFAULT_INTERVAL_S

    def __post_init__(self) -> None:
        if self.ttl_s < 0 or self.max_bytes < 0 or self.interval_s <= 0:
            raise ValueError("retention limits must be >= 0 and the interval > 0")


class DatasetLifecycle:
    """Ownership, deletion and retention over a DatasetStore. `references()` gives the data set
    ids that job records name; `in_use()` those of queued or running jobs."""

    def __init__(
        self,
        store: DatasetStore,
        references: Callable[[], Iterable[str]],
        in_use: Callable[[], Iterable[str]],
        retention: Retention | None = None,
    ) -> None:
        self.store = store
        self.references = references
        self.in_use = in_use
        self.retention = retention or Retention()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- deletion -------------------------------------------------------------------------------
    def delete(self, ds_id: str, principal: Principal) -> None:
        """The caller's DeleteDataset (NOT_FOUND unless the caller may see it)."""
        self.store.get(ds_id, principal)
        with self._lock:
            if ds_id in set(self.in_use()):
                raise FailedPrecondition(
                    f"data set {ds_id} is read by a queued or running job", field="dataset_id"
                )
            self._remove(ds_id)
        log.info("dataset deleted", dataset_id=ds_id)

    def _remove(self, ds_id: str) -> None:
        """Rename away first (atomic: never a half-deleted data set under its id), then delete."""
        path = self.store._dir(ds_id)
        gone = path.with_name(f".deleting-{ds_id}-{time.monotonic_ns()}")
        os.replace(path, gone)
        self.store.forget(ds_id)
        shutil.rmtree(gone, ignore_errors=True)

    # -- retention ------------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> list[str]:
        """Remove unreferenced data sets past the TTL, then the least recently used beyond the
        byte cap; returns the ids removed."""
        now = time.time() if now is None else now
        ttl, cap = self.retention.ttl_s, self.retention.max_bytes
        with self._lock:
            keep = set(self.references()) | set(self.in_use())
            candidates = []  # (last use, bytes, id)
            for path in self.store.root.iterdir():
                meta = path / USED_FILE
                if path.name.startswith(".") or path.name in keep or not meta.is_file():
                    continue
                size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
                candidates.append((meta.stat().st_mtime, size, path.name))
            candidates.sort()
            removed = [ds for used, _, ds in candidates if ttl and now - used > ttl]
            total = sum(size for used, size, ds in candidates if ds not in removed)
            for _, size, ds in candidates:
                if not cap or total <= cap:
                    break
                if ds not in removed:
                    removed.append(ds)
                    total -= size
            for ds in removed:
                self._remove(ds)
        if removed:
            log.info("datasets expired", count=len(removed), ids=removed[:10])
        return removed

    def start(self) -> None:
        for leftover in self.store.root.glob(".deleting-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        self._thread = threading.Thread(target=self._run, name="dataset-retention", daemon=True)
        self._stop.clear()
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception:  # noqa: BLE001 - a failed sweep is retried at the next interval
                log.exception("dataset retention sweep failed")
            if self._stop.wait(self.retention.interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
