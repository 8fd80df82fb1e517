"""Rendering a job's event stream for a person: a progress bar on a terminal, plain lines
elsewhere. Everything goes to stderr so stdout stays free for `--json`."""

from __future__ import annotations

import sys
import time

from tunewire.v1 import trainer_pb2

_STATE = trainer_pb2.Job.State.Name


class ProgressPrinter:
    def __init__(self, stream=None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.enabled = enabled
        self._last_line = 0.0
        self._open_line = False

    def __call__(self, event: trainer_pb2.JobEvent) -> None:
        if not self.enabled:
            return
        kind = event.WhichOneof("event")
        if kind == "progress":
            self._progress(event.progress)
        elif kind == "state_change":
            self._line(f"[{_STATE(event.state_change.state).lower()}] {event.state_change.message}")
        elif kind == "log":
            self._line(event.log.message)
        elif kind == "metrics":
            parts = [
                f"{m.split}/{m.name}={m.value:.4f}"
                for m in event.metrics.metrics
                if m.name
                in (
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
            ]
            if parts:
                self._line("  " + "  ".join(parts))

    def _progress(self, p: trainer_pb2.JobEvent.Progress) -> None:
        total = max(p.total_steps, 1)
        frac = min(p.step / total, 1.0)
        width = 28
        bar = "█" * int(frac * width) + "░" * (width - int(frac * width))
        epoch = f"epoch {p.epoch} " if p.epoch else ""
        loss = f" loss {p.loss:.4f}" if p.loss == p.loss else ""  # NaN check
        rate = f" {p.throughput:,.0f} {p.unit}" if p.throughput else ""
        text = f"{p.phase:<10} {epoch}{bar} {p.step}/{p.total_steps}{loss}{rate}"
        if self.tty:
            self.stream.write("\r" + text[:160].ljust(100))
            self.stream.flush()
            self._open_line = True
        else:
            now = time.monotonic()
            # Without a terminal, one line per epoch (and at most one a second while embedding).
            if p.phase != "embedding" or now - self._last_line > 1.0 or p.step == p.total_steps:
                self._line(text)
                self._last_line = now

    def _line(self, text: str) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
