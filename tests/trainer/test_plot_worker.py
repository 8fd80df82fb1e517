"""The plot worker: figures drawn in another process are the files the job's process would
draw, its errors come back as the real error, and a lost worker costs nothing but time."""

from __future__ import annotations

import numpy as np
import pytest

from services.trainer.recipes.predictive import plot_worker as W

PLOTS = "services.trainer.recipes.predictive.plots"


def _confusion(path):
    return W.Drawing(
        PLOTS, "confusion", (path, "y", ["a", "b"], np.array([0, 1, 1]), np.array([0, 1, 0]))
    )


@pytest.fixture
def worker(monkeypatch):
    """The one idle worker of a process's first job."""
    W._close_idle()
    monkeypatch.setattr(W, "_jobs", 0)
    W.prestart()
    assert len(W._idle) == 1
    yield W._idle[0]
    W._close_idle()


def _png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_batch_is_drawn_by_the_worker_and_it_is_kept_for_the_next_job(worker, tmp_path):
    batch = W.Batch([_confusion(tmp_path / "a.png"), _confusion(tmp_path / "b.png")])
    assert [w for w, _ in batch.shares] == [worker]
    batch.wait()
    assert _png(tmp_path / "a.png") and _png(tmp_path / "b.png")
    assert W._idle == [worker] and worker.alive()


def test_from_a_processs_second_job_a_batch_is_split_between_two_workers(worker, tmp_path):
    """A server's later jobs: two idle workers, each drawing its share on its own core."""
    W.prestart()  # the process's second job
    assert len(W._idle) == 2 and worker in W._idle
    paths = [tmp_path / f"{k}.png" for k in range(3)]
    batch = W.Batch([_confusion(p) for p in paths])
    assert sorted(len(share) for _, share in batch.shares) == [1, 2]
    assert len({id(w) for w, _ in batch.shares}) == 2 and W._idle == []
    batch.wait()
    assert all(_png(p) for p in paths)
    assert len(W._idle) == 2 and all(w.alive() for w in W._idle)


def test_the_workers_error_is_raised_in_the_job(worker, tmp_path):
    with pytest.raises(FileNotFoundError):
        W.Batch([_confusion(tmp_path / "missing" / "dir" / "a.png")]).wait()
    assert worker.alive()  # the worker itself goes on


def test_a_lost_worker_means_drawing_here(worker, tmp_path):
    batch = W.Batch([_confusion(tmp_path / "a.png")])
    worker.process.kill()
    batch.wait()
    assert _png(tmp_path / "a.png")
    assert W._idle == []


def test_without_a_worker_the_figures_are_drawn_here(tmp_path):
    W._close_idle()
    batch = W.Batch([_confusion(tmp_path / "a.png")])
    assert [w for w, _ in batch.shares] == [None]
    batch.wait()
    assert _png(tmp_path / "a.png")


def test_only_plotting_functions_are_called_by_name():
    with pytest.raises(ValueError, match="not a plotting module"):
        W.Drawing("os", "remove", ("x",))()


def test_an_idle_worker_is_ended_at_once_at_exit(worker, tmp_path):
    """At the process's exit (the end of every embedded CLI run) an idle worker is killed, not
    waited for through its interpreter's teardown: it has nothing left to write."""
    W.Batch([_confusion(tmp_path / "a.png")]).wait()
    assert _png(tmp_path / "a.png") and W._idle == [worker]
    W._close_idle()
    assert worker.process.returncode is not None and W._idle == []


def test_the_worker_imports_only_what_it_draws_with():
    """The worker's interpreter starts once per embedded CLI run: what it imports is its start."""
    import subprocess
    import sys

    code = (
        "import io, sys\n"
        "from services.trainer.recipes.predictive.plot_drawing import serve\n"
        "serve(io.BytesIO(), io.BytesIO())\n"  # imports as the worker does, then sees EOF
        "print(','.join(sorted({'structlog', 'torch', 'pandas', 'grpc'} & set(sys.modules))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=W.ROOT,
        env={"PYTHONPATH": str(W.ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""


def test_the_embedded_cli_starts_a_predictive_jobs_worker_before_its_services(monkeypatch):
    """Started by `train`/`experiment` when the job runs embedded and is predictive; the job's
    own start then finds it (one worker: a first job's)."""
    from types import SimpleNamespace

    from clients.commands.training import start_plot_worker

    W._close_idle()
    monkeypatch.setattr(W, "_jobs", 0)
    start_plot_worker(SimpleNamespace(trainer=None), {"model_type": "llm"})
    start_plot_worker(SimpleNamespace(trainer="127.0.0.1:1"), {"input_features": []})
    assert W._idle == []
    start_plot_worker(SimpleNamespace(trainer=None), {"input_features": []})
    assert len(W._idle) == 1
    worker = W._idle[0]
    W.prestart()
    assert W._idle == [worker]
    W._close_idle()
