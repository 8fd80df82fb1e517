"""Where `train`, `experiment`, `predict` and `evaluate` write, in Ludwig's layout.

With `--experiment_name` or `--model_name` a run gets Ludwig's directory,
`<output_directory>/<experiment>_<model>` (then `_0`, `_1`, ... when taken): the model under
`model/` (its TensorBoard logs under `model/logs/`), `description.json`, `training_statistics.json`
and, for `experiment`, `test_statistics.json` and the test predictions. Without either name the
artifact goes to `<output_directory>/<job_id>/`, as before.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from clients.commands.parsing import json_text

if TYPE_CHECKING:  # pandas is imported where predictions are written, not by every command
    import pandas as pd

STATISTICS = ("training_statistics.json", "test_statistics.json")
LOGS_DIR = "logs"


def experiment_dir(output_directory: str | Path, experiment_name: str, model_name: str) -> Path:
    """Ludwig's run directory: `<experiment>_<model>`, then `_0`, `_1`, ... while it exists."""
    base = Path(output_directory) / f"{experiment_name}_{model_name}"
    candidate, suffix = base, 0
    while candidate.exists():
        candidate = base.with_name(f"{base.name}_{suffix}")
        suffix += 1
    candidate.mkdir(parents=True)
    return candidate


def description(
    *,
    command: list[str],
    config: dict,
    datasets: dict[str, str],
    data_format: str | None,
    random_seed: int,
    job_id: str,
) -> dict:
    """description.json: what Ludwig records about a run (command, config, data, seed,
    versions), plus the job id that names the run on the trainer."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "command": " ".join(_scrub(command)),
        "config": config,
        **datasets,
        "data_format": data_format or "auto",
        "random_seed": random_seed,
        "job_id": job_id,
        "tunewire_version": ver("tunewire"),
        "torch_version": ver("torch"),
        "transformers_version": ver("transformers"),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


SECRET_FLAGS = ("--token",)


def _scrub(argv: list[str]) -> list[str]:
    """The command line without a bearer token's value (description.json is shared)."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
        elif arg in SECRET_FLAGS:
            out.append(arg)
            hide = True
        elif arg.startswith(tuple(f"{f}=" for f in SECRET_FLAGS)):
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


def place_run(
    model_dir: Path,
    run_dir: Path,
    *,
    keep_model: bool,
    keep_statistics: bool,
    keep_logs: bool,
) -> None:
    """Lay a downloaded artifact (`run_dir/model`) out as Ludwig does: the statistics files
    beside `model/`, and drop what a `--skip_save_*` flag asked not to keep."""
    for name in STATISTICS:
        src = model_dir / name
        if src.is_file() and keep_statistics:
            shutil.copy2(src, run_dir / name)
    if not keep_logs:
        shutil.rmtree(model_dir / LOGS_DIR, ignore_errors=True)
    if not keep_model:
        if keep_logs and (model_dir / LOGS_DIR).is_dir():
            keep = run_dir / ".logs"
            shutil.move(str(model_dir / LOGS_DIR), keep)
            shutil.rmtree(model_dir)
            model_dir.mkdir()
            shutil.move(str(keep), model_dir / LOGS_DIR)
        else:
            shutil.rmtree(model_dir, ignore_errors=True)


def write_predictions(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """predictions.parquet and predictions.csv with Ludwig's column names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parquet, csv = out_dir / "predictions.parquet", out_dir / "predictions.csv"
    frame.to_parquet(parquet, index=False)
    frame.to_csv(csv, index=False)
    return [parquet, csv]


def write_json(path: Path, value: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json_text(value, indent=2, default=float))
    return path
