"""What a recipe gets from the job runner, and what it gives back.

Recipes see plain Python: data frames for the splits, a resolved config, a work directory, an
`emit` for events and a cancellation flag. No protobuf and no grpc here; the servicer converts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import structlog


@dataclass
class MetricValue:
    split: str  # train | validation | test
    feature: str  # output feature name, or "combined"
    name: str
    value: float


@dataclass
class Progress:
    phase: str
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float = float("nan")
    throughput: float = 0.0
    unit: str = "examples/s"


@dataclass
class Metrics:
    metrics: list[MetricValue]


@dataclass
class Log:
    message: str


Event = Progress | Metrics | Log


class JobCancelled(Exception):
    """Raised inside a recipe when the job's cancel flag is set; the runner marks it CANCELLED."""


@dataclass
class JobContext:
    job_id: str
    config: Any  # the resolved config dataclass (tunewire.config)
    config_dict: dict  # the same, as recorded (every default written)
    work_dir: Path  # the job's own directory: checkpoints, worker files
    artifact_dir: Path  # where the recipe writes the artifact (renamed into place by the runner)
    train: pd.DataFrame
    validation: pd.DataFrame | None
    test: pd.DataFrame | None
    emit: Callable[[Event], None]
    cancel_event: threading.Event = field(default_factory=threading.Event)
    # An EmbedderClient (clients.sdk) for predictive recipes; None where not needed.
    embedder: Any = None
    # 1-based attempt number: > 1 means the trainer restarted and the recipe should resume.
    attempt: int = 1

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise JobCancelled("cancelled by request")


@dataclass
class JobResult:
    metrics: list[MetricValue]
    # Extra files beside the artifact (plots...), relative to it, listed in the summary.
    extras: list[str] = field(default_factory=list)


class Recipe(Protocol):
    """A training recipe's fixed life (torchtune's shape)."""

    def __init__(self, ctx: JobContext) -> None: ...

    def setup(self) -> None: ...

    def train(self) -> None: ...

    def save_artifact(self) -> list[str] | None: ...

    def evaluate(self) -> JobResult: ...

    def cleanup(self) -> None: ...


def run_recipe(recipe: Recipe) -> JobResult:
    """A recipe's life: setup, train, evaluate, save the artifact, clean up. A cleanup that
    fails after the job has failed is logged and the job's own error is raised: a half-set-up
    recipe's cleanup (an AttributeError for what setup never made) once hid a clear error
    about the data behind "internal error: AttributeError"."""
    try:
        recipe.setup()
        recipe.train()
        result = recipe.evaluate()
        result.extras = recipe.save_artifact() or []
    except BaseException:
        try:
            recipe.cleanup()
        except Exception:  # noqa: BLE001 - the job's error is the one to report
            structlog.get_logger(__name__).exception("cleanup failed after the job failed")
        raise
    recipe.cleanup()
    return result
