"""`run_recipe`: the fixed life of a recipe that trains in the trainer's process."""

from __future__ import annotations

import pytest

from services.trainer.context import JobResult, MetricValue, Recipe, run_recipe


class Steps:
    """A recipe that records its calls; `fail_in` raises there."""

    def __init__(self, fail_in: str = "", cleanup_fails: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_in = fail_in
        self.cleanup_fails = cleanup_fails

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_in:
            raise ValueError(f"{name} failed")

    def setup(self) -> None:
        self._step("setup")

    def train(self) -> None:
        self._step("train")

    def evaluate(self) -> JobResult:
        self._step("evaluate")
        return JobResult([MetricValue("test", "y", "loss", 0.5)])

    def save_artifact(self) -> list[str]:
        self._step("save_artifact")
        return ["plot.png"]

    def cleanup(self) -> None:
        self.calls.append("cleanup")
        if self.cleanup_fails:
            raise AttributeError("what setup never made")


def test_the_predictive_recipe_is_a_recipe():
    from services.trainer.recipes.predictive.recipe import PredictiveRecipe

    assert issubclass(PredictiveRecipe, Recipe)
    assert not issubclass(dict, Recipe)


def test_a_recipe_runs_setup_train_evaluate_save_cleanup():
    recipe = Steps()
    result = run_recipe(recipe)
    assert recipe.calls == ["setup", "train", "evaluate", "save_artifact", "cleanup"]
    assert result.extras == ["plot.png"] and result.metrics[0].value == 0.5


def test_a_failed_cleanup_does_not_hide_the_jobs_error():
    recipe = Steps(fail_in="setup", cleanup_fails=True)
    with pytest.raises(ValueError, match="setup failed"):
        run_recipe(recipe)
    assert recipe.calls == ["setup", "cleanup"]
