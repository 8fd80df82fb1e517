"""`serve embedder` with its host work traced (bench/host_trace.py), for bench/online_serving.py.

    python bench/traced_embedder.py CONTROL_DIR [serve embedder flags...]

A thread of its own watches CONTROL_DIR: a file `start` there begins a window (the file is
removed), a file `stop` ends it and writes the window's totals to `trace.json` (then removes
`stop`): per kind of work (a request's begin, a batch's launch, a request's finish, ...) how
many, their total, mean and largest milliseconds, and Python's collections. What a row of the
online bench cannot see from outside: how many Embed calls the front door made, and how long a
batch's launch held the launcher (one thread: the longest step of a pass on the host). Never
used by the product.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.host_trace import HostTrace  # noqa: E402

POLL_SECONDS = 0.05


def window_totals(events: list[tuple[str, float, float, str]], t0: float, t1: float) -> dict:
    """Per kind, over the events that began inside [t0, t1]: count, total/mean/max ms."""
    spans: dict[str, list[float]] = defaultdict(list)
    for what, start, end, _ in events:
        if t0 <= start <= t1:
            spans[what].append(end - start)
    return {
        what: {
            "count": len(d),
            "total_ms": 1e3 * sum(d),
            "mean_ms": 1e3 * sum(d) / len(d),
            "max_ms": 1e3 * max(d),
        }
        for what, d in sorted(spans.items())
    }


def watch(control: Path, trace: HostTrace) -> None:
    started = time.perf_counter()
    while True:
        time.sleep(POLL_SECONDS)
        if (control / "start").exists():
            (control / "start").unlink()
            with trace._lock:
                trace.events.clear()
            started = time.perf_counter()
        if (control / "stop").exists():
            ended = time.perf_counter()
            with trace._lock:
                events = list(trace.events)
            out = {"seconds": ended - started, "kinds": window_totals(events, started, ended)}
            tmp = control / "trace.json.tmp"
            tmp.write_text(json.dumps(out))
            tmp.rename(control / "trace.json")
            (control / "stop").unlink()


def main() -> None:
    control = Path(sys.argv[1])
    control.mkdir(parents=True, exist_ok=True)
    from services.embedder.__main__ import main as serve

    with HostTrace().installed() as trace:
        threading.Thread(target=watch, args=(control, trace), daemon=True).start()
        serve(sys.argv[2:])


if __name__ == "__main__":
    main()
