"""A job's events are bounded whatever its length: the runner records at most
`max_events_per_job` besides state changes (was: one per step, on disk and in memory, without
end), and the generative worker writes about MAX_PROGRESS progress lines however many steps."""

from __future__ import annotations

import json

from services.trainer.context import JobContext, JobResult, Log, MetricValue, Progress
from services.trainer.recipes.generative.events import MAX_PROGRESS, EventWriter, keeps
from tests.trainer.test_jobs import CONFIG, dataset, make_runner, wait_state  # noqa: F401


def test_the_runner_keeps_at_most_its_event_limit(tmp_path, dataset):  # noqa: F811
    datasets, ds_id = dataset

    def chatty(ctx: JobContext) -> JobResult:
        for step in range(500):
            ctx.emit(Progress("training", step=step, total_steps=500, loss=1.0))
            ctx.emit(Log(f"step {step}"))
        ctx.artifact_dir.mkdir(parents=True)
        return JobResult([MetricValue("test", "label", "accuracy", 1.0)])

    store, runner = make_runner(tmp_path, datasets, chatty, max_events_per_job=50)
    try:
        rec = runner.submit(CONFIG, dataset_id=ds_id)
        done = wait_state(store, rec.id, ("SUCCEEDED", "FAILED"))
        assert done.state == "SUCCEEDED" and done.metrics
        events = list(store.follow(rec.id))
        others = [e for e in events if e.kind != "state"]
        assert len(others) == 50 - 2  # the first two are the QUEUED and RUNNING states
        assert "limit of 50 events" in others[-1].data["message"]
        assert [e.data["state"] for e in events if e.kind == "state"][-1] == "SUCCEEDED"
    finally:
        runner.stop()


def test_the_worker_writes_a_bounded_number_of_progress_lines(tmp_path):
    total = 25 * MAX_PROGRESS + 7
    writer = EventWriter(tmp_path / "events.jsonl", enabled=True)
    for step in range(1, total + 1):
        writer.progress(phase="train", step=step, total_steps=total, loss=0.1)
    writer.close()
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert MAX_PROGRESS // 2 <= len(lines) <= MAX_PROGRESS + 1
    assert lines[-1]["step"] == total
    assert all(keeps(s, 100) for s in range(1, 101))  # a short job reports every step


def test_the_event_limit_is_a_trainer_flag(tmp_path):
    from services.trainer.__main__ import build_parser, settings_from_args

    args = build_parser().parse_args(["--data-dir", str(tmp_path), "--max-events-per-job", "7"])
    assert settings_from_args(args).max_events_per_job == 7
