"""A second process that draws a job's PNGs, so the job's own process does not have to.

Why: a warm job's plots are ~0.3 s of matplotlib (plus ~0.3 s to import it in a fresh process),
all on the job's thread after training, while the machine's other core idles. The worker is
started when a job starts (it imports matplotlib while the head trains) and draws the figures
from plain data (numpy arrays, lists, dicts: never torch tensors) while the job writes the rest of
its artifact; the job waits for the PNGs before it finishes, so a SUCCEEDED job has them all.
What the worker runs is `plot_drawing` (no structlog, no subprocess: a lighter start).

It is a fresh interpreter (`subprocess`, not `fork`): the trainer has gRPC and OpenMP threads,
which a forked child must not inherit, and `multiprocessing`'s spawn would re-run the CLI's
`__main__`. It imports no torch and no service. One idle worker is kept per process for the next
job; each job takes its own, so two jobs never share one. When the worker cannot be started or
dies, the figures are drawn in the job's process, as before (same files, same errors)."""

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


def prestart() -> None:
    """Have an idle worker importing matplotlib now, for a job about to train."""
    with _lock:
        _idle[:] = [w for w in _idle if w.alive()]
        if _idle:
            return
    try:
        worker = PlotWorker()
    except OSError as e:  # the figures will be drawn in this process
        log.warning("plot worker not started", error=str(e))
        return
    with _lock:
        _idle.append(worker)


def _take() -> PlotWorker | None:
    with _lock:
        while _idle:
            worker = _idle.pop()
            if worker.alive():
                return worker
    return None


def _give_back(worker: PlotWorker) -> None:
    with _lock:
        if not _idle:
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
    """Drawings handed to a worker now, and waited for by `wait` (drawn here if it failed)."""

    def __init__(self, drawings: list[Drawing]) -> None:
        self.drawings = drawings
        self.worker = _take() if drawings else None
        if self.worker is not None:
            try:
                self.worker.submit(drawings)
            except (OSError, pickle.PicklingError) as e:
                log.warning("plot worker unusable, drawing here", error=str(e))
                self.worker.close()
                self.worker = None

    def wait(self) -> None:
        if self.worker is None:
            draw_all(self.drawings)
            return
        worker, self.worker = self.worker, None
        try:
            error = worker.result()
        except (OSError, EOFError, pickle.UnpicklingError) as e:
            error = f"worker lost: {e}"
            worker.close()
        else:
            _give_back(worker)
        if error is not None:  # the same figures here: the same files, or the real error
            log.warning("plot worker failed, drawing here", error=error)
            draw_all(self.drawings)
