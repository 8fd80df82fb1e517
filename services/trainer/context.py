"""What a recipe gets from the job runner, and what it gives back.

Recipes see plain Python: data frames for the splits, a resolved config, a work directory, an
`emit` for events and a cancellation flag. No protobuf and no grpc here; the servicer converts.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import structlog

if TYPE_CHECKING:  # the splits' type only: the CLI imports this module to resolve configs
    import pandas as pd


@dataclass
class MetricValue:
    split: str  # train | validation | test
    feature: str  # output feature name, or "combined"
    name: str
    value: float


# A job's events, in one representation: what a recipe emits, what the job's log stores (`kind`
# and `to_dict()`), what a generative worker writes on its own event file, and what the servicer
# turns into protobuf (the only place that does).


@dataclass
class StateChange:
    kind: ClassVar[str] = "state"
    state: str  # QUEUED | RUNNING | SUCCEEDED | FAILED | CANCELLED
    message: str = ""

    def to_dict(self) -> dict:
        return {"state": self.state, "message": self.message}

    @classmethod
    def from_dict(cls, data: dict) -> StateChange:
        return cls(data["state"], data.get("message", ""))


@dataclass
class Progress:
    kind: ClassVar[str] = "progress"
    phase: str
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float = float("nan")
    throughput: float = 0.0
    unit: str = "examples/s"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Progress:
        """A worker's progress line carries more (lr, target_tokens, for its own reports)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass
class Metrics:
    kind: ClassVar[str] = "metrics"
    metrics: list[MetricValue]

    def to_dict(self) -> dict:
        return {"metrics": [dataclasses.asdict(m) for m in self.metrics]}

    @classmethod
    def from_dict(cls, data: dict) -> Metrics:
        return cls([MetricValue(**m) for m in data["metrics"]])


@dataclass
class Log:
    kind: ClassVar[str] = "log"
    message: str

    def to_dict(self) -> dict:
        return {"message": self.message}

    @classmethod
    def from_dict(cls, data: dict) -> Log:
        return cls(data.get("message", ""))


Event = StateChange | Progress | Metrics | Log
EVENT_KINDS: dict[str, type[Event]] = {c.kind: c for c in (StateChange, Progress, Metrics, Log)}


def event_from_dict(kind: str, data: dict) -> Event:
    """The event a stored or relayed `(kind, data)` pair stands for."""
    return EVENT_KINDS[kind].from_dict(data)


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


@runtime_checkable
class Recipe(Protocol):
    """A recipe that trains in the trainer's own process, as `run_recipe` drives it (torchtune's
    fixed life): the predictive one (`PredictiveRecipe`). A model type's entry point is its
    `run(ctx) -> JobResult` (`model_types.py`); a generative job's (`launch.run_generative_job`)
    starts torchrun workers instead, each of which drives `GenerativeRecipe` itself
    (`recipes/generative/worker.py`: a process of its own, with no service code)."""

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
