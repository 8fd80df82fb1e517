"""The TensorBoard event files: what torch's SummaryWriter writes for the same scalars (read back
with tensorboard's own reader), written without importing torch (the plot worker has none)."""

from __future__ import annotations

import subprocess
import sys

from services.trainer.tensorboard import LOGS_DIR, write_scalars

SCALARS = {
    "training": [
        ("combined/loss", 0.5, 10),
        ("combined/loss", 0.25, 20),
        ("learning_rate", 1e-3, 10),
    ],
    "validation": [("label/roc_auc", 0.875, 10)],
    "test": [],
}


def read(directory) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory)).Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_the_events_are_summary_writers(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    write_scalars(tmp_path / "ours", SCALARS)
    for split, points in SCALARS.items():
        if not points:
            assert not (tmp_path / "ours" / LOGS_DIR / split).exists()
            continue
        writer = SummaryWriter(str(tmp_path / "torch" / split))
        for tag, value, step in points:
            writer.add_scalar(tag, value, step)
        writer.close()
        ours = read(tmp_path / "ours" / LOGS_DIR / split)
        assert ours == read(tmp_path / "torch" / split)
        assert ours  # something was written and read back


def test_writing_them_imports_no_torch(tmp_path):
    code = (
        "import sys\n"
        "from services.trainer.tensorboard import write_scalars\n"
        f"write_scalars({str(tmp_path)!r}, {{'training': [('loss', 1.0, 1)]}})\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert list((tmp_path / LOGS_DIR / "training").glob("events.out.tfevents.*"))
