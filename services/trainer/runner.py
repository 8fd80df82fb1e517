"""The job runner: a queue, worker threads, attempts, resume after a restart, and limits.

A job is admitted (`admission.py`) before it is recorded, then queued. After a restart the runner
queues again every job that was QUEUED or RUNNING when the trainer died, with `attempts + 1`
(a generative recipe resumes from its last checkpoint; a predictive one starts over), or marks it
FAILED once it has used `max_attempts`. Nothing is left "running".

Artifacts are written into a staging directory and renamed into `<data_dir>/artifacts/<id>` only
when complete, so a crash never leaves a half artifact that looks whole.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog

from services.trainer.admission import Admission, JobInputs, check_namespace
from services.trainer.context import (
    Event,
    JobCancelled,
    JobContext,
    JobResult,
    Log,
    StateChange,
)
from services.trainer.job_store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    JobRecord,
    JobStore,
)
from services.trainer.model_types import model_type, resolve
from tunewire import tracing
from tunewire.auth import acting_for, current_principal
from tunewire.config import to_dict
from tunewire.errors import (
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    TunewireError,
)

log = structlog.get_logger(__name__)

Dispatcher = Callable[[JobContext], JobResult]
# Events a job records at most besides its state changes: recipes report per epoch or a bounded
# number of steps, so this is the backstop that keeps a job's log (on disk and in memory) finite.
DEFAULT_MAX_EVENTS_PER_JOB = 100_000


def dispatch(name: str) -> Dispatcher:
    """The recipe entry point for a model type."""
    return model_type(name).run


class JobRunner:
    """A queue and worker threads that run jobs through their recipe."""

    def __init__(
        self,
        store: JobStore,
        admission: Admission,
        artifacts_root: Path,
        *,
        embedder_factory: Callable[[], Any] | None = None,
        uploader: Callable[[JobRecord], str] | None = None,
        workers: int = 1,
        max_attempts: int = 3,
        dispatcher: Callable[[str], Dispatcher] = dispatch,
        max_job_seconds: float = 0.0,
        max_queued_jobs: int = 0,
        max_events_per_job: int = DEFAULT_MAX_EVENTS_PER_JOB,
    ) -> None:
        self.store = store
        self.max_events_per_job = max_events_per_job
        self.admission = admission
        self.artifacts_root = Path(artifacts_root)
        self.artifacts_root.mkdir(parents=True, exist_ok=True)
        self.embedder_factory = embedder_factory
        self.uploader = uploader
        self.max_attempts = max_attempts
        # Wall-clock limit counted from the job's first start, across restarts (0: none).
        self.max_job_seconds = max_job_seconds
        self.max_queued_jobs = max_queued_jobs
        self.dispatch = dispatcher
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancel: dict[str, threading.Event] = {}
        # The resolved config of each queued job, admitted once in this process.
        self._configs: dict[str, Any] = {}
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
            if rec.state not in (RUNNING, QUEUED):
                continue
            if rec.state == RUNNING and rec.attempts >= self.max_attempts:
                self._finish(
                    rec.id,
                    FAILED,
                    error=f"the trainer stopped during attempt "
                    f"{rec.attempts} of {self.max_attempts}; not retried",
                )
                continue
            if rec.state == RUNNING:
                with self.store.lock:
                    self.store.update(rec.id, state=QUEUED)
                    self._emit(
                        rec.id,
                        StateChange(
                            QUEUED, "the trainer restarted while this job ran; it will resume"
                        ),
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
    ) -> JobRecord:
        """Admit a job (everything it needs checked before any work), record it and queue it.
        It belongs to the caller being served (`tunewire.auth`); a request id is that caller's
        own and bound to this request (the same id with another request is ALREADY_EXISTS)."""
        caller = current_principal()
        digest = request_digest(
            raw_config, dataset_id, training_set_id, validation_set_id, test_set_id, upload_to
        )
        existing = _same_request(self.store.find_by_request(caller.name, request_id), digest)
        if existing is not None:
            return existing
        if upload_to:
            check_namespace(caller, upload_to)  # before the queue: it needs no config
        if (
            self.max_queued_jobs
            and sum(j.state == QUEUED for j in self.store.all()) >= self.max_queued_jobs
        ):
            raise ResourceExhausted(
                f"{self.max_queued_jobs} jobs are already waiting; retry later",
                reason="JOB_QUEUE_FULL",
            )
        inputs = JobInputs(dataset_id, training_set_id, validation_set_id, test_set_id)
        config = self.admission.admit(raw_config, inputs, upload_to)
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
            owner=caller.name,
            request_digest=digest if request_id else "",
        )
        with self._lock:
            # Two creates with one request id may have been admitted side by side: one job.
            existing = _same_request(self.store.find_by_request(caller.name, request_id), digest)
            if existing is not None:
                return existing
            # Recorded whole or not at all: on a full disk the record or its first event fails
            # (RESOURCE_EXHAUSTED DISK_FULL at the interceptor), and no QUEUED job that never
            # runs is left for the same request id to return.
            self.store.create(rec)
            try:
                self._emit(rec.id, StateChange(QUEUED, "queued"))
            except BaseException:
                self.store.discard(rec.id)
                raise
            self._cancel[rec.id] = threading.Event()
            self._configs[rec.id] = config
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
        with self.store.lock:
            self.store.update(
                job_id, state=RUNNING, attempts=attempt, start_time=rec.start_time or time.time()
            )
            self._emit(job_id, StateChange(RUNNING, f"attempt {attempt}"))
        bound = log.bind(job_id=job_id, attempt=attempt)
        staging = self.artifacts_root / f".staging-{job_id}-{attempt}"
        shutil.rmtree(staging, ignore_errors=True)
        deadline = self._deadline(job_id, cancel)
        trace = tracing.JobTrace(job_id, rec.request_id, attempt, rec.owner)
        try:
            # A job recorded before a restart was admitted by the previous process; its recorded
            # config is the resolved one, read back once here.
            config = self._configs.pop(job_id, None) or resolve(rec.config)
            inputs = JobInputs(
                rec.dataset_id, rec.training_set_id, rec.validation_set_id, rec.test_set_id
            )
            train, val, test = self.admission.load_splits(config, inputs)
            ctx = JobContext(
                job_id=job_id,
                config=config,
                config_dict=rec.config,
                work_dir=self.store.work_dir(job_id),
                artifact_dir=staging,
                train=train,
                validation=val,
                test=test,
                emit=lambda ev: (trace.progress(ev), self._emit(job_id, ev))[-1],
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
            trace.end(self.store.get(job_id).state)

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
        self._emit(job_id, Log(f"uploading the artifact to {rec.upload_to}"))
        upload_id = self.uploader(rec)  # type: ignore[misc]
        self.store.update(job_id, upload_id=upload_id)
        self._emit(job_id, Log(f"uploaded ({upload_id})"))

    def _emit(self, job_id: str, event: Event) -> None:
        """Record an event; past `max_events_per_job`, only state changes (said once)."""
        if not isinstance(event, StateChange):
            count = self.store.event_count(job_id)
            if count >= self.max_events_per_job:
                return
            if count == self.max_events_per_job - 1:
                event = Log(
                    f"this job reached its limit of {self.max_events_per_job} "
                    "events: later progress, metrics and log events are not recorded (its "
                    "state changes and final metrics are)"
                )
        self.store.append_event(job_id, event)

    def _finish(self, job_id: str, state: str, error: str = "") -> None:
        # The state and its event change together, so a follower never sees a finished job
        # without its last event.
        with self.store.lock:
            self.store.update(job_id, state=state, error=error, end_time=time.time())
            self._emit(job_id, StateChange(state, error or state.lower()))


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


def request_digest(raw_config: dict, *inputs: str) -> str:
    """What a CreateJob asked for, as a hash: its config and its data set and upload fields."""
    canonical = json.dumps([raw_config, *inputs], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_request(existing: JobRecord | None, digest: str) -> JobRecord | None:
    """The job of an earlier request with this id, when it asked for the same thing; a reuse of
    the id for another request is ALREADY_EXISTS. (A job recorded before requests had digests
    is taken to match.)"""
    if existing is None or not existing.request_digest or existing.request_digest == digest:
        return existing
    raise AlreadyExists(
        f"request id {existing.request_id!r} was used for another job ({existing.id}); "
        "use a new request id for a new job",
        field="request_id",
        reason="REQUEST_ID_REUSED",
    )
