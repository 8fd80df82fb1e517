"""A second process that draws a job's PNGs, so the job's own process does not have to.

Why: a warm job's plots are ~0.3 s of matplotlib (plus ~0.3 s to import it in a fresh process),
all on the job's thread after training, while the machine's other core idles. The worker is
started when a job starts (it imports matplotlib while the head trains) and draws the figures
from plain data (numpy arrays, lists, dicts: never torch tensors) while the job writes the rest of
its artifact; the job waits for the PNGs before it finishes, so a SUCCEEDED job has them all.
What the worker runs is `plot_drawing` (no structlog, no subprocess: a lighter start).

It is a fresh interpreter (`subprocess`, not `fork`): the trainer has gRPC and OpenMP threads,
which a forked child must not inherit, and `multiprocessing`'s spawn would re-run the CLI's
`__main__`. It imports no torch and no service. Idle workers are kept per process for the next
job (one for a process's first job, two from its second on: `LATER_JOB_WORKERS`); each job takes
its own, so two jobs never share one. When a worker cannot be started or dies, its figures are
drawn in the job's process, as before (same files, same errors)."""

from __future__ import annotations

import atexit
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import structlog

from services.trainer.recipes.predictive import plot_drawing
from services.trainer.recipes.predictive.plot_drawing import Drawing, draw_all

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parents[4]
__all__ = ["Batch", "Drawing", "PlotWorker", "draw_all", "prestart"]


class PlotWorker:
    """One worker process: a batch of drawings in, `None` or the error's text out."""

    def __init__(self) -> None:
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            f"from {plot_drawing.__name__} import serve; serve()"
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Not the job's stderr: a caller waiting for that pipe to close (a shell pipeline, a
            # parent capturing output) would wait for the worker's exit too. Its errors come
            # back on stdout, or as the same error when the job draws again.
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._pending = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def submit(self, drawings: list[Drawing]) -> None:
        assert self.process.stdin is not None
        pickle.dump(drawings, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.flush()
        self._pending = True

    def result(self) -> str | None:
        """Wait for the batch; its error's text (None when every figure was drawn)."""
        assert self.process.stdout is not None and self._pending
        self._pending = False
        return pickle.load(self.process.stdout)

    def close(self) -> None:
        """End a worker that has no batch in flight (idle, or broken): killed, not asked to exit.
        It holds nothing to save, and a clean exit is its interpreter's teardown of matplotlib
        and numpy (~0.1-0.2 s), which the job's process would wait for at its own exit: the end
        of every CLI run in embedded mode."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


_lock = threading.Lock()
_idle: list[PlotWorker] = []
_jobs = 0  # jobs this process has started (prestart calls)
# Idle workers kept for the next job: one for a process's first job (an embedded CLI run has
# one job: a second interpreter would cost it ~0.5 s of CPU for ~0.15 s of figures), two from
# its second job on (a server): a batch is split between them, drawn on both cores.
FIRST_JOB_WORKERS, LATER_JOB_WORKERS = 1, 2


def _wanted() -> int:
    return FIRST_JOB_WORKERS if _jobs <= 1 else LATER_JOB_WORKERS


def prestart() -> None:
    """Have idle workers importing matplotlib now, for a job about to train."""
    global _jobs
    with _lock:
        _jobs += 1
    start_idle()


def start_idle() -> None:
    """Start the idle workers this process's next job will take, where missing: at a job's
    start, or earlier (the embedded CLI, before its services: the worker's imports then run
    on the other core while this process imports torch)."""
    with _lock:
        _idle[:] = [w for w in _idle if w.alive()]
        missing = _wanted() - len(_idle)
    for _ in range(missing):
        try:
            worker = PlotWorker()
        except OSError as e:  # the figures will be drawn in this process
            log.warning("plot worker not started", error=str(e))
            return
        with _lock:
            _idle.append(worker)


def _take(most: int) -> list[PlotWorker]:
    """Up to `most` live idle workers (none started here: a start costs more than drawing)."""
    taken: list[PlotWorker] = []
    with _lock:
        while _idle and len(taken) < most:
            worker = _idle.pop()
            if worker.alive():
                taken.append(worker)
    return taken


def _give_back(worker: PlotWorker) -> None:
    with _lock:
        if len(_idle) < _wanted():
            _idle.append(worker)
            return
    worker.close()


@atexit.register
def _close_idle() -> None:
    with _lock:
        workers, _idle[:] = list(_idle), []
    for worker in workers:
        worker.close()


class Batch:
    """Drawings handed to idle workers now (split between them: the k-th drawing to worker
    k mod n), and waited for by `wait`; a share whose worker failed is drawn here."""

    def __init__(self, drawings: list[Drawing]) -> None:
        self.shares: list[tuple[PlotWorker | None, list[Drawing]]] = []
        workers = _take(len(drawings))
        for k, worker in enumerate(workers):
            share = drawings[k :: len(workers)]
            try:
                worker.submit(share)
            except (OSError, pickle.PicklingError) as e:
                log.warning("plot worker unusable, drawing here", error=str(e))
                worker.close()
                self.shares.append((None, share))
            else:
                self.shares.append((worker, share))
        if not workers and drawings:
            self.shares.append((None, drawings))

    def wait(self) -> None:
        shares, self.shares = self.shares, []
        failed: list[Drawing] = []
        for worker, share in shares:
            if worker is None:
                failed += share
                continue
            try:
                error = worker.result()
            except (OSError, EOFError, pickle.UnpicklingError) as e:
                error = f"worker lost: {e}"
                worker.close()
            else:
                _give_back(worker)
            if error is not None:  # the same figures here: the same files, or the real error
                log.warning("plot worker failed, drawing here", error=error)
                failed += share
        draw_all(failed)
