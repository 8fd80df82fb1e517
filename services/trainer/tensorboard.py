"""TensorBoard event files for a job, inside its artifact (`logs/<split>/`, Ludwig's layout), so
`tensorboard --logdir <artifact>/logs` shows the run wherever the artifact was downloaded.

Written with tensorboard's own EventFileWriter and summary protos, as torch's SummaryWriter
writes scalars (it wraps the same writer), without importing torch: a predictive job hands this
to its plot worker (`plot_drawing.MODULES`), whose interpreter has no torch and imports
tensorboard's writer while the job trains; in the job's process that import was ~0.1-0.15 s of a
warm job's artifact."""

from __future__ import annotations

from pathlib import Path

LOGS_DIR = "logs"


def import_writer() -> None:
    """Import what `write_scalars` needs (the plot worker does it while idle)."""
    from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: F401
    from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401


def write_scalars(artifact_dir: Path, scalars: dict[str, list[tuple[str, float, int]]]) -> None:
    """`scalars`: split ("training", "validation", "test") → [(tag, value, step)], one event
    file per split, each point an event with a `simple_value` summary (SummaryWriter's
    `add_scalar`)."""
    import time

    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    for split, points in scalars.items():
        if not points:
            continue
        writer = EventFileWriter(str(Path(artifact_dir) / LOGS_DIR / split))
        try:
            for tag, value, step in points:
                summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
                writer.add_event(Event(summary=summary, wall_time=time.time(), step=int(step)))
        finally:
            writer.close()
