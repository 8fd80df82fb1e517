"""TensorBoard event files for a job, inside its artifact (`logs/<split>/`, Ludwig's layout), so
`tensorboard --logdir <artifact>/logs` shows the run wherever the artifact was downloaded."""

from __future__ import annotations

from pathlib import Path

LOGS_DIR = "logs"


def write_scalars(artifact_dir: Path, scalars: dict[str, list[tuple[str, float, int]]]) -> None:
    """`scalars`: split ("training", "validation", "test") → [(tag, value, step)], written with
    torch's SummaryWriter (tensorboard's own event format)."""
    from torch.utils.tensorboard import SummaryWriter

    for split, points in scalars.items():
        if not points:
            continue
        writer = SummaryWriter(str(Path(artifact_dir) / LOGS_DIR / split))
        try:
            for tag, value, step in points:
                writer.add_scalar(tag, float(value), int(step))
        finally:
            writer.close()
