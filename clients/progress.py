"""Rendering a job's event stream for a person, on stderr so stdout stays free for `--json`.

On a terminal: rich progress bars with elapsed time and ETA, one per phase and split
("embedding", "training", "evaluating validation"), and a line per evaluation with each metric
once. Elsewhere (CI logs, pipes): the same as plain lines, at most one a second per phase.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

from tunewire.v1 import trainer_pb2

_STATE = trainer_pb2.Job.State.Name
# Metrics a person reads during training; the rest are in the statistics files.
SHOWN = (
    "loss",
    "accuracy",
    "f1",
    "roc_auc",
    "macro_f1",
    "r2",
    "mean_squared_error",
    "perplexity",
    "token_accuracy",
)
_PHASES = {"train": "training", "eval": "evaluating", "embed": "embedding"}


def phase_label(phase: str) -> str:
    """A server's phase ("train", "evaluating test") in one spelling: "training", ..."""
    head, _, rest = phase.partition(" ")
    head = _PHASES.get(head, head)
    # Ludwig's split names: "train" is "training", also in "embedding train+validation+test".
    rest = "+".join({"train": "training"}.get(part, part) for part in rest.split("+"))
    return f"{head} {rest}".strip()


def metrics_line(metrics) -> str:
    """One line per evaluation, each (split, feature, metric) once. With one output feature the
    feature name and Ludwig's `combined` loss (the same number) are left out."""
    seen: dict[tuple[str, str, str], float] = {}
    for m in metrics:
        if m.name in SHOWN:
            seen.setdefault((m.split, m.feature, m.name), m.value)
    features = {f for (_, f, _) in seen if f != "combined"}
    parts = []
    for (split, feature, name), value in seen.items():
        if feature == "combined" and len(features) <= 1:
            continue
        who = f"{split}/{feature}" if len(features) > 1 else split
        parts.append(f"{who}/{name}={value:.4f}")
    return "  ".join(parts)


class _Bars:
    """rich bars on a terminal; plain rate-limited lines elsewhere."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._tasks: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._rich = None
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._rich = Progress(
                TextColumn("{task.description:<22}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=Console(file=stream),
                transient=False,
            )
            self._rich.start()

    def update(self, label: str, done: int, total: int, extra: str = "") -> None:
        total = max(total, 1)
        if self._rich is not None:
            if label not in self._tasks:
                self._tasks[label] = self._rich.add_task(label, total=total, extra=extra)
            self._rich.update(self._tasks[label], completed=done, total=total, extra=extra)
            return
        now = time.monotonic()
        start = self._started.setdefault(label, now)
        if now - self._last.get(label, 0.0) < 1.0 and done < total:
            return
        self._last[label] = now
        elapsed = now - start
        eta = elapsed / done * (total - done) if done else math.nan
        eta_text = "?" if math.isnan(eta) else _clock(eta)
        clock = f"[{_clock(elapsed)} elapsed, eta {eta_text}]"
        self.line(f"{label:<22} {done}/{total} {clock} {extra}".rstrip())

    def line(self, text: str) -> None:
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressPrinter:
    """A `TrainerClient.wait` callback: bars for progress events, lines for the rest."""

    def __init__(self, stream=None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._bars: _Bars | None = None

    @property
    def bars(self) -> _Bars:
        if self._bars is None:
            self._bars = _Bars(self.stream)
        return self._bars

    def __call__(self, event: trainer_pb2.JobEvent) -> None:
        if not self.enabled:
            return
        kind = event.WhichOneof("event")
        if kind == "progress":
            p = event.progress
            label = phase_label(p.phase)
            if p.epoch and label == "training":
                extra = f"epoch {p.epoch}"
            else:
                extra = ""
            if not math.isnan(p.loss) and label == "training":
                extra += f" loss {p.loss:.4f}"
            if p.throughput:
                extra += f" {p.throughput:,.0f} {p.unit}"
            self.bars.update(label, p.step, p.total_steps, extra.strip())
        elif kind == "state_change":
            self.bars.line(
                f"[{_STATE(event.state_change.state).lower()}] {event.state_change.message}"
            )
        elif kind == "log":
            self.bars.line(event.log.message)
        elif kind == "metrics":
            text = metrics_line(event.metrics.metrics)
            if text:
                self.bars.line("  " + text)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.close()


def count_progress(
    label: str, stream=None
) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(callback(done, total), close) for work the client itself counts (`embed`)."""
    bars = _Bars(stream or sys.stderr)
    return (lambda done, total: bars.update(label, done, total)), bars.close
