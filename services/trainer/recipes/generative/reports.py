"""Ludwig's `training_statistics.json` and TensorBoard event files for a generative job, from the
worker's events as the launcher relays them: the training loss, learning rate and tokens/s per
step, the validation metrics at each evaluation, the final test metrics."""

from __future__ import annotations

import json
from pathlib import Path

from services.trainer.tensorboard import write_scalars
from tunewire import statistics

SPLIT_NAMES = {"train": "training", "validation": "validation", "test": "test"}


class RunRecord:
    """Collects the relayed worker events of one attempt."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.evaluations: list[tuple[int, list[dict]]] = []

    def add(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "progress":
            self.steps.append(event)
        elif kind == "metrics":
            step = int(self.steps[-1]["step"]) if self.steps else 0
            self.evaluations.append((step, list(event.get("metrics", []))))

    def write(self, artifact_dir: Path, output: str, final: list[dict]) -> None:
        """training_statistics.json and logs/ in the artifact."""
        evaluations = []
        for step, metrics in self.evaluations:
            loss = next((s["loss"] for s in reversed(self.steps) if s["step"] <= step), None)
            evaluation: dict = {}
            if loss is not None:
                evaluation["training"] = {output: {"loss": loss}, "combined": {"loss": loss}}
            for m in metrics:
                split = SPLIT_NAMES.get(m["split"], m["split"])
                evaluation.setdefault(split, {}).setdefault(m["feature"], {})[m["name"]] = m[
                    "value"
                ]
            evaluations.append(evaluation)
        stats = statistics.training_statistics(evaluations)
        test = [m for m in final if m["split"] == "test"]
        if test:
            stats["test"] = statistics.training_statistics(
                [{"test": {m["feature"]: {m["name"]: m["value"]} for m in test}}]
            )["test"]
        if not stats.get("training") and self.steps:  # no evaluation ran: the last loss
            stats["training"] = {output: {"loss": [float(self.steps[-1]["loss"])]}}
        (artifact_dir / "training_statistics.json").write_text(json.dumps(stats, indent=2))
        last = int(self.steps[-1]["step"]) if self.steps else 0
        train = []
        for s in self.steps:
            step = int(s["step"])
            train.append(("combined/loss", s["loss"], step))
            if s.get("lr") is not None:
                train.append(("learning_rate", s["lr"], step))
            if s.get("throughput"):
                train.append(
                    (
                        f"throughput/{s.get('unit', 'tokens/s').replace('/', '_per_')}",
                        s["throughput"],
                        step,
                    )
                )
        scalars: dict[str, list[tuple[str, float, int]]] = {"training": train}
        for step, metrics in self.evaluations:
            for m in metrics:
                split = SPLIT_NAMES.get(m["split"], m["split"])
                scalars.setdefault(split, []).append(
                    (f"{m['feature']}/{m['name']}", m["value"], step)
                )
        scalars.setdefault("test", []).extend(
            (f"{m['feature']}/{m['name']}", m["value"], last) for m in test
        )
        write_scalars(artifact_dir, scalars)
