"""The plot worker's side (`plot_worker.py` is the job's): what a figure to draw is, and the
loop that draws batches of them. Kept apart so that the worker's interpreter imports only this,
matplotlib, numpy and the plotting modules: not structlog and its rich tracebacks (~0.1 s of
every worker's start, one per embedded CLI run)."""

from __future__ import annotations

import gc
import importlib
import pickle
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

# Only these modules' functions are drawn by name (the worker imports nothing else of ours).
MODULES = ("services.trainer.recipes.predictive.plots", "tunewire.stat_plots")


@dataclass(frozen=True)
class Drawing:
    """One figure to draw: `module.function(*args)`, the args plain picklable data."""

    module: str
    function: str
    args: tuple = field(default_factory=tuple)

    def __call__(self) -> Any:
        if self.module not in MODULES:
            raise ValueError(f"plot_worker: {self.module} is not a plotting module")
        return getattr(importlib.import_module(self.module), self.function)(*self.args)


def draw_all(drawings: Iterable[Drawing]) -> None:
    for drawing in drawings:
        drawing()


def serve(stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> None:
    """The worker's loop: import matplotlib first (while the job trains), then draw batches
    until the job's process closes the pipe."""
    import traceback

    from matplotlib.backends import backend_agg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401 (the import is the point)

    for module in MODULES:
        importlib.import_module(module)
    # matplotlib's ~80k objects live as long as the worker: out of the cyclic collector's way,
    # so that a full collection while drawing (~0.1 s, every other batch) walks only figures.
    gc.freeze()
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    while True:
        try:
            drawings = pickle.load(stdin)
        except EOFError:
            return
        try:
            draw_all(drawings)
            answer = None
        except Exception:  # noqa: BLE001 (sent back; the job draws again and raises it)
            answer = traceback.format_exc(limit=5)
        pickle.dump(answer, stdout, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.flush()
