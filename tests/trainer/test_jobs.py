"""The durable job queue: records survive restarts, a job running when the trainer died is resumed
(or failed after its attempts), cancellation and idempotent creation work, a crashing recipe fails
its job and not the runner. The recipe is injected: these tests are about the runner."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

from services.trainer.admission import Admission
from services.trainer.context import JobCancelled, JobContext, JobResult, Log, MetricValue, Progress
from services.trainer.datasets import DatasetStore
from services.trainer.job_store import JobRecord, JobStore
from services.trainer.runner import JobRunner
from tunewire.errors import FailedPrecondition, InvalidArgument

CONFIG = {
    "input_features": [
        {"name": "text", "type": "text", "encoder": {"pretrained_model_name_or_path": "/m"}}
    ],
    "output_features": [{"name": "label", "type": "binary"}],
}


@pytest.fixture
def dataset(tmp_path):
    store = DatasetStore(tmp_path / "datasets")
    df = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["0", "1"] * 10})
    rec = store.put([df.to_csv(index=False).encode()], "d.csv")
    return store, rec.id


def wait_state(store: JobStore, job_id: str, states, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.get(job_id).state in states:
            return store.get(job_id)
        time.sleep(0.02)
    raise AssertionError(f"job stayed {store.get(job_id).state}")


def make_runner(tmp_path, datasets, recipe, **kw):
    store = JobStore(tmp_path / "jobs")
    runner = JobRunner(
        store, Admission(datasets), tmp_path / "artifacts", dispatcher=lambda _t: recipe, **kw
    )
    runner.start()
    return store, runner


def ok_recipe(ctx: JobContext) -> JobResult:
    ctx.emit(Progress("training", step=1, total_steps=1, loss=0.5))
    ctx.artifact_dir.mkdir(parents=True)
    (ctx.artifact_dir / "weights.bin").write_bytes(b"x" * 10)
    return JobResult([MetricValue("test", "label", "accuracy", 1.0)])


def test_job_succeeds_records_metrics_events_and_artifact(tmp_path, dataset):
    datasets, ds_id = dataset
    store, runner = make_runner(tmp_path, datasets, ok_recipe)
    rec = runner.submit(CONFIG, dataset_id=ds_id, request_id="r1")
    done = wait_state(store, rec.id, ("SUCCEEDED",))
    assert done.metrics == [{"split": "test", "feature": "label", "name": "accuracy", "value": 1.0}]
    assert (tmp_path / "artifacts" / rec.id / "weights.bin").exists()
    assert not list((tmp_path / "artifacts").glob(".staging-*"))
    kinds = [e.kind for e in store.follow(rec.id)]
    assert kinds[0] == "state" and "progress" in kinds and kinds[-1] == "state"
    # Idempotent create: the same request id returns the same job.
    assert runner.submit(CONFIG, dataset_id=ds_id, request_id="r1").id == rec.id
    runner.stop()


def test_bad_input_is_refused_before_any_work(tmp_path, dataset):
    datasets, ds_id = dataset
    store, runner = make_runner(tmp_path, datasets, ok_recipe)
    bad = {**CONFIG, "output_features": [{"name": "missing_col", "type": "binary"}]}
    with pytest.raises(InvalidArgument) as info:
        runner.submit(bad, dataset_id=ds_id)
    assert info.value.field == "output_features[0].column"
    with pytest.raises(InvalidArgument):
        runner.submit(CONFIG)
    assert store.all() == []
    runner.stop()


def test_cancel_running_job(tmp_path, dataset):
    datasets, ds_id = dataset
    started = threading.Event()

    def slow(ctx: JobContext) -> JobResult:
        started.set()
        while True:
            ctx.check_cancelled()
            time.sleep(0.01)

    store, runner = make_runner(tmp_path, datasets, slow)
    rec = runner.submit(CONFIG, dataset_id=ds_id)
    assert started.wait(5)
    runner.cancel(rec.id)
    assert wait_state(store, rec.id, ("CANCELLED",)).error == "cancelled by request"
    with pytest.raises(FailedPrecondition):
        runner.cancel(rec.id)
    runner.stop()


def test_crashing_recipe_fails_its_job_only(tmp_path, dataset):
    datasets, ds_id = dataset

    def boom(ctx):
        raise RuntimeError("secret details")

    store, runner = make_runner(tmp_path, datasets, boom)
    a = runner.submit(CONFIG, dataset_id=ds_id)
    failed = wait_state(store, a.id, ("FAILED",))
    assert failed.error == "internal error: RuntimeError"  # no internals leak to clients
    runner.dispatch = lambda _t: ok_recipe
    b = runner.submit(CONFIG, dataset_id=ds_id)
    assert wait_state(store, b.id, ("SUCCEEDED",)).state == "SUCCEEDED"
    runner.stop()


def test_restart_resumes_a_job_that_was_running(tmp_path, dataset):
    datasets, ds_id = dataset
    # First life: the job is running when the "trainer dies" (we simply abandon the runner).
    block = threading.Event()

    def hang(ctx):
        block.wait(30)
        raise JobCancelled("abandoned")

    store, runner = make_runner(tmp_path, datasets, hang)
    rec = runner.submit(CONFIG, dataset_id=ds_id)
    wait_state(store, rec.id, ("RUNNING",))
    # Second life: a new store and runner over the same directory.
    attempts = []

    def resume(ctx):
        attempts.append(ctx.attempt)
        return ok_recipe(ctx)

    store2, runner2 = make_runner(tmp_path, datasets, resume)
    done = wait_state(store2, rec.id, ("SUCCEEDED",))
    assert attempts == [2] and done.attempts == 2
    messages = [e.data.get("message", "") for e in store2.follow(rec.id)]
    assert any("resume" in m for m in messages)
    block.set()
    runner2.stop()


def test_restart_fails_a_job_out_of_attempts(tmp_path, dataset):
    datasets, ds_id = dataset
    store = JobStore(tmp_path / "jobs")
    runner = JobRunner(
        store,
        Admission(datasets),
        tmp_path / "artifacts",
        dispatcher=lambda _t: ok_recipe,
        max_attempts=1,
    )
    rec = runner.submit(CONFIG, dataset_id=ds_id)  # queued, runner not started
    store.update(rec.id, state="RUNNING", attempts=1)
    runner2 = JobRunner(
        JobStore(tmp_path / "jobs"),
        Admission(datasets),
        tmp_path / "artifacts",
        dispatcher=lambda _t: ok_recipe,
        max_attempts=1,
    )
    runner2.start()
    rec2 = runner2.store.get(rec.id)
    assert rec2.state == "FAILED" and "not retried" in rec2.error
    runner2.stop()


def test_a_torn_last_event_does_not_hide_later_events_after_restart(tmp_path):
    """A trainer killed mid-append leaves half a line; the events written after the restart must
    survive the next restart too (they used to be glued to the fragment and lost)."""
    store = JobStore(tmp_path / "jobs")
    store.create(JobRecord(id="job-1", state="RUNNING", config={}))
    store.append_event("job-1", Log("one"))
    with (tmp_path / "jobs" / "job-1" / "events.jsonl").open("a") as fh:
        fh.write('{"sequence": 1, "time": 1.0, "kind": "lo')  # the crash
    reopened = JobStore(tmp_path / "jobs")
    reopened.append_event("job-1", Log("two"))
    reopened.update("job-1", state="SUCCEEDED")
    events = list(JobStore(tmp_path / "jobs").follow("job-1"))
    assert [(e.sequence, e.data["message"]) for e in events] == [(0, "one"), (1, "two")]


def test_an_optimizer_that_is_not_built_is_refused_at_admission(tmp_path, dataset):
    """Ludwig lists bitsandbytes' optimizers; they are refused naming the key, never replaced
    by Adam (the generative recipe used to run Adam for paged_adamw)."""
    datasets, ds_id = dataset
    store, runner = make_runner(tmp_path, datasets, ok_recipe)
    paged = {**CONFIG, "trainer": {"optimizer": {"type": "paged_adamw"}}}
    with pytest.raises(InvalidArgument) as info:
        runner.submit(paged, dataset_id=ds_id)
    assert info.value.field == "trainer.optimizer.type" and "not built" in str(info.value)
    assert store.all() == []
    runner.stop()
