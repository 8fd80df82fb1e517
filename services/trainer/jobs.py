"""Training jobs: durable records, an event log per job, a queue and the runner.

Each job lives in `<data_dir>/jobs/<id>/`: `job.json` (the record, replaced atomically on every
change) and `events.jsonl` (append-only, one event a line, with a sequence number). After a
restart the store reloads every record; a job that was QUEUED or RUNNING when the trainer died is
queued again with `attempts + 1` (recipes resume from their checkpoints), or marked FAILED once it
has used `max_attempts`. Nothing is left "running".

Artifacts are written into a staging directory and renamed into `<data_dir>/artifacts/<id>` only
when complete, so a crash never leaves a half artifact that looks whole.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from services.trainer.context import (
    Event,
    JobCancelled,
    JobContext,
    JobResult,
    Log,
    Metrics,
    MetricValue,
    Progress,
)
from services.trainer.datasets import DatasetStore
from tunewire.auth import acting_for, current_principal
from tunewire.config import resolve, to_dict
from tunewire.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    TunewireError,
)

log = structlog.get_logger(__name__)

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


@dataclass
class StoredEvent:
    sequence: int
    time: float
    kind: str  # state | progress | metrics | log
    data: dict


class JobStore:
    """Job records and event logs on disk, with in-memory followers for Watch."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, JobRecord] = {}
        self._events: dict[str, list[StoredEvent]] = {}
        for path in sorted(self.root.glob("*/job.json")):
            try:
                rec = JobRecord(**json.loads(path.read_text()))
            except (json.JSONDecodeError, TypeError) as exc:
                log.error("unreadable job record skipped", path=str(path), error=str(exc))
                continue
            self._jobs[rec.id] = rec
            self._events[rec.id] = self._read_events(rec.id)

    def _read_events(self, job_id: str) -> list[StoredEvent]:
        path = self.root / job_id / "events.jsonl"
        events = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    events.append(StoredEvent(**json.loads(line)))
                except (json.JSONDecodeError, TypeError):
                    break  # a torn last line from a crash: the events before it stand
        return events

    def create(self, rec: JobRecord) -> JobRecord:
        with self._lock:
            (self.root / rec.id).mkdir(parents=True, exist_ok=True)
            self._jobs[rec.id] = rec
            self._events[rec.id] = []
            self._save(rec)
        return rec

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            if job_id not in self._jobs:
                raise NotFound(f"no job {job_id!r}", field="id")
            return self._jobs[job_id]

    def find_by_request(self, request_id: str) -> JobRecord | None:
        with self._lock:
            return next(
                (j for j in self._jobs.values() if request_id and j.request_id == request_id), None
            )

    def all(self) -> list[JobRecord]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: (j.create_time, j.id))

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        with self._lock:
            rec = self._jobs[job_id]
            for k, v in changes.items():
                setattr(rec, k, v)
            self._save(rec)
            self._changed.notify_all()
            return rec

    def append_event(self, job_id: str, kind: str, data: dict) -> StoredEvent:
        with self._lock:
            events = self._events[job_id]
            ev = StoredEvent(len(events), time.time(), kind, data)
            with open(self.root / job_id / "events.jsonl", "a") as fh:
                fh.write(json.dumps(asdict(ev)) + "\n")
            events.append(ev)
            self._changed.notify_all()
            return ev

    def follow(
        self, job_id: str, from_sequence: int = 0, alive: Callable[[], bool] = lambda: True
    ) -> Iterator[StoredEvent]:
        """Replay events from `from_sequence`, then wait for new ones until the job ends."""
        self.get(job_id)
        seq = max(0, from_sequence)
        while alive():
            with self._lock:
                events = self._events[job_id]
                batch = events[seq:]
                done = self._jobs[job_id].state in TERMINAL
                if not batch and not done:
                    self._changed.wait(timeout=1.0)
                    continue
            yield from batch
            seq += len(batch)
            if done and not batch:
                return
            if done:
                with self._lock:
                    if len(self._events[job_id]) == seq:
                        return

    def work_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def _save(self, rec: JobRecord) -> None:
        path = self.root / rec.id / "job.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(rec)))
        os.replace(tmp, path)


Dispatcher = Callable[[JobContext], JobResult]


class JobRunner:
    """A queue and worker threads that run jobs through their recipe."""

    def __init__(
        self,
        store: JobStore,
        datasets: DatasetStore,
        artifacts_root: Path,
        *,
        embedder_factory: Callable[[], Any] | None = None,
        uploader: Callable[[JobRecord], str] | None = None,
        workers: int = 1,
        max_attempts: int = 3,
        dispatcher: Callable[[str], Dispatcher] | None = None,
        max_job_seconds: float = 0.0,
        max_queued_jobs: int = 0,
    ) -> None:
        self.store = store
        self.datasets = datasets
        self.artifacts_root = Path(artifacts_root)
        self.artifacts_root.mkdir(parents=True, exist_ok=True)
        self.embedder_factory = embedder_factory
        self.uploader = uploader
        self.max_attempts = max_attempts
        # Wall-clock limit counted from the job's first start, across restarts (0: none).
        self.max_job_seconds = max_job_seconds
        self.max_queued_jobs = max_queued_jobs
        self.dispatch = dispatcher or dispatch
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"job-runner-{i}", daemon=True)
            for i in range(workers)
        ]
        self._stopping = threading.Event()

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Recover jobs from before a restart, then start the workers."""
        # A crash mid-artifact leaves a staging directory no attempt will reuse (each attempt
        # stages under its own name); it never looks whole, but it holds disk space.
        for leftover in self.artifacts_root.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for rec in self.store.all():
            if rec.state == RUNNING or rec.state == QUEUED:
                if rec.state == RUNNING and rec.attempts >= self.max_attempts:
                    self._finish(
                        rec.id,
                        FAILED,
                        error=f"the trainer stopped during attempt "
                        f"{rec.attempts} of {self.max_attempts}; not retried",
                    )
                    continue
                if rec.state == RUNNING:
                    self.store.update(rec.id, state=QUEUED)
                    self._event(
                        rec.id,
                        "state",
                        {
                            "state": QUEUED,
                            "message": "the trainer restarted while this job ran; it will resume",
                        },
                    )
                self._cancel[rec.id] = threading.Event()
                self._queue.put(rec.id)
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; running ones are asked to cancel and will resume after restart."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)

    # ---------------------------------------------------------------------------------- API
    def submit(
        self,
        raw_config: dict,
        *,
        dataset_id: str = "",
        training_set_id: str = "",
        validation_set_id: str = "",
        test_set_id: str = "",
        request_id: str = "",
        upload_to: str = "",
        validate: Callable[[Any], None] | None = None,
    ) -> JobRecord:
        """Validate everything a job needs before any work, then queue it."""
        if request_id:
            existing = self.store.find_by_request(request_id)
            if existing is not None:
                return existing
        if (
            self.max_queued_jobs
            and sum(j.state == QUEUED for j in self.store.all()) >= self.max_queued_jobs
        ):
            raise ResourceExhausted(
                f"{self.max_queued_jobs} jobs are already waiting; retry later",
                reason="JOB_QUEUE_FULL",
            )
        config = resolve(raw_config)
        self._check_datasets(config, dataset_id, training_set_id, validation_set_id, test_set_id)
        if validate is not None:
            validate(config)
        rec = JobRecord(
            id=f"job-{uuid.uuid4().hex[:12]}",
            state=QUEUED,
            config=to_dict(config),
            dataset_id=dataset_id,
            training_set_id=training_set_id,
            validation_set_id=validation_set_id,
            test_set_id=test_set_id,
            request_id=request_id,
            upload_to=upload_to,
            create_time=time.time(),
            owner=current_principal().name,
        )
        with self._lock:
            self.store.create(rec)
            self._cancel[rec.id] = threading.Event()
        self._event(rec.id, "state", {"state": QUEUED, "message": "queued"})
        self._queue.put(rec.id)
        log.info("job queued", job_id=rec.id, model_type=config.model_type)
        return rec

    def cancel(self, job_id: str) -> JobRecord:
        rec = self.store.get(job_id)
        if rec.state in TERMINAL:
            raise FailedPrecondition(f"job {job_id} already ended ({rec.state})", field="id")
        with self._lock:
            flag = self._cancel.setdefault(job_id, threading.Event())
            flag.set()
            if self.store.get(job_id).state == QUEUED:
                self._finish(job_id, CANCELLED, error="cancelled by request")
        return self.store.get(job_id)

    # ------------------------------------------------------------------------------ internals
    def _check_datasets(self, config, dataset_id: str, train: str, val: str, test: str) -> None:
        if not dataset_id and not train:
            raise InvalidArgument(
                "give a data set (dataset_id) or a training set", field="dataset_id"
            )
        if dataset_id and train:
            raise InvalidArgument(
                "give either dataset_id or training_set_id, not both", field="training_set_id"
            )
        ids = {
            "dataset_id": dataset_id,
            "training_set_id": train,
            "validation_set_id": val,
            "test_set_id": test,
        }
        columns_needed = _columns_needed(config)
        for field_name, ds_id in ids.items():
            if not ds_id:
                continue
            record = self.datasets.get(ds_id) if ds_id else None
            assert record is not None
            for path, column in columns_needed.items():
                label = path.startswith("output_features")
                if column not in record.columns and not (label and field_name == "test_set_id"):
                    raise InvalidArgument(
                        f"column {column!r} is not in data set {ds_id} "
                        f"(columns: {', '.join(record.columns)})",
                        field=path,
                    )
        split = getattr(getattr(config, "preprocessing", None), "split", None)
        if dataset_id and split is not None and split.type in ("fixed", "stratify", "hash"):
            record = self.datasets.get(dataset_id)
            if split.column not in record.columns:
                raise InvalidArgument(
                    f"split column {split.column!r} is not in the data set",
                    field="preprocessing.split.column",
                )

    def _work(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            if self.store.get(job_id).state != QUEUED:
                continue
            try:
                # The embedder and the gateway see this job's calls as made for its owner.
                with acting_for(self.store.get(job_id).owner):
                    self._run(job_id)
            except Exception:  # noqa: BLE001 - a runner bug must not kill the worker thread
                log.exception("job runner failed", job_id=job_id)
                self._finish(job_id, FAILED, error="internal error in the trainer")

    def _run(self, job_id: str) -> None:
        rec = self.store.get(job_id)
        attempt = rec.attempts + 1
        cancel = self._cancel.setdefault(job_id, threading.Event())
        self.store.update(
            job_id, state=RUNNING, attempts=attempt, start_time=rec.start_time or time.time()
        )
        self._event(job_id, "state", {"state": RUNNING, "message": f"attempt {attempt}"})
        bound = log.bind(job_id=job_id, attempt=attempt)
        staging = self.artifacts_root / f".staging-{job_id}-{attempt}"
        shutil.rmtree(staging, ignore_errors=True)
        deadline = self._deadline(job_id, cancel)
        try:
            config = resolve(rec.config)
            train, val, test = self._load_splits(rec, config)
            ctx = JobContext(
                job_id=job_id,
                config=config,
                config_dict=rec.config,
                work_dir=self.store.work_dir(job_id),
                artifact_dir=staging,
                train=train,
                validation=val,
                test=test,
                emit=lambda ev: self._emit(job_id, ev),
                cancel_event=cancel,
                attempt=attempt,
                embedder=self.embedder_factory() if self.embedder_factory else None,
            )
            result = self.dispatch(config.model_type)(ctx)
            final = self.artifacts_root / job_id
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            metrics = [asdict(m) for m in result.metrics]
            self.store.update(
                job_id, metrics=metrics, artifact_path=str(final), summary={"extras": result.extras}
            )
            if rec.upload_to and self.uploader is not None:
                self._upload(job_id)
            self._finish(job_id, SUCCEEDED)
            bound.info("job succeeded")
        except JobCancelled as exc:
            if deadline is not None and deadline.expired:
                self._finish(job_id, FAILED, error=deadline.reason)
            else:
                self._finish(job_id, CANCELLED, error=str(exc))
        except TunewireError as exc:
            bound.info("job failed", reason=exc.reason, error=str(exc))
            self._finish(job_id, FAILED, error=str(exc))
        except MemoryError:
            self._finish(job_id, FAILED, error="out of memory")
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                bound.error("job crashed", error=repr(exc), traceback=traceback.format_exc())
                self._finish(job_id, FAILED, error=f"internal error: {type(exc).__name__}")
            else:
                # Free what this attempt wrote before writing the record, which needs space too.
                shutil.rmtree(staging, ignore_errors=True)
                bound.error("disk full", error=str(exc))
                self._finish(
                    job_id,
                    FAILED,
                    error="the trainer's disk is full "
                    "(no space left on device); free space and submit again",
                )
        except Exception as exc:  # noqa: BLE001 - the job fails, the trainer lives on
            bound.error("job crashed", error=repr(exc), traceback=traceback.format_exc())
            self._finish(job_id, FAILED, error=f"internal error: {type(exc).__name__}")
        finally:
            if deadline is not None:
                deadline.cancel()
            shutil.rmtree(staging, ignore_errors=True)

    def _deadline(self, job_id: str, cancel: threading.Event) -> _Deadline | None:
        """A timer that cancels the job when its wall-clock budget is spent."""
        if not self.max_job_seconds:
            return None
        rec = self.store.get(job_id)
        left = self.max_job_seconds - (time.time() - (rec.start_time or time.time()))
        return _Deadline(
            max(0.0, left),
            cancel,
            f"the job exceeded its wall-clock limit of {self.max_job_seconds:g} s",
        )

    def _upload(self, job_id: str) -> None:
        rec = self.store.get(job_id)
        self._event(job_id, "log", {"message": f"uploading the artifact to {rec.upload_to}"})
        upload_id = self.uploader(rec)  # type: ignore[misc]
        self.store.update(job_id, upload_id=upload_id)
        self._event(job_id, "log", {"message": f"uploaded ({upload_id})"})

    def _load_splits(self, rec: JobRecord, config):
        from services.trainer.splits import split

        if rec.dataset_id:
            df = self.datasets.load(rec.dataset_id)
            pre = getattr(config, "preprocessing", None)
            if pre is not None and pre.sample_ratio < 1.0:
                df = df.sample(frac=pre.sample_ratio, random_state=config.seed).reset_index(
                    drop=True
                )
            if pre is not None and getattr(pre, "sample_size", None):
                df = df.sample(
                    n=min(pre.sample_size, len(df)), random_state=config.seed
                ).reset_index(drop=True)
            return split(df, pre.split, config.seed)
        load = lambda i: self.datasets.load(i) if i else None  # noqa: E731
        return (load(rec.training_set_id), load(rec.validation_set_id), load(rec.test_set_id))

    def _emit(self, job_id: str, ev: Event) -> None:
        if isinstance(ev, Progress):
            self._event(job_id, "progress", asdict(ev))
        elif isinstance(ev, Metrics):
            self._event(job_id, "metrics", {"metrics": [asdict(m) for m in ev.metrics]})
        elif isinstance(ev, Log):
            self._event(job_id, "log", {"message": ev.message})

    def _event(self, job_id: str, kind: str, data: dict) -> None:
        self.store.append_event(job_id, kind, data)

    def _finish(self, job_id: str, state: str, error: str = "") -> None:
        self.store.update(job_id, state=state, error=error, end_time=time.time())
        self._event(job_id, "state", {"state": state, "message": error or state.lower()})


class _Deadline:
    """Sets a job's cancel flag after `seconds`; `expired` tells a timeout from a user cancel."""

    def __init__(self, seconds: float, cancel: threading.Event, reason: str) -> None:
        self.reason = reason
        self.expired = False

        def fire() -> None:
            self.expired = True
            cancel.set()

        self._timer = threading.Timer(seconds, fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()


def dispatch(model_type: str) -> Dispatcher:
    """The recipe entry point for a model type."""
    if model_type == "ecd":
        from services.trainer.recipes.predictive.recipe import run_predictive_job

        return run_predictive_job
    if model_type == "llm":
        try:
            from services.trainer.recipes.generative.launch import run_generative_job
        except ImportError:
            raise FailedPrecondition(
                "generative fine-tuning is not built in this trainer", field="model_type"
            ) from None
        return run_generative_job
    raise InvalidArgument(f"unknown model_type {model_type!r}", field="model_type")


def _columns_needed(config) -> dict[str, str]:
    """config path -> column, for every feature the config reads."""
    out = {}
    for i, f in enumerate(getattr(config, "input_features", []) or []):
        out[f"input_features[{i}].column"] = f.column
    for i, f in enumerate(getattr(config, "output_features", []) or []):
        out[f"output_features[{i}].column"] = f.column
    return out


def metric_values(rec: JobRecord) -> list[MetricValue]:
    return [MetricValue(**m) for m in rec.metrics]
