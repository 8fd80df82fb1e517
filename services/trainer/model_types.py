"""The trainer's one table of model types: how each parses its config, checks a job at admission,
trains, and predicts from its artifact.

Ludwig's `model_type` picks the row: `ecd` (the default; a predictive head over encoders) or `llm`
(generative fine-tuning). Recipes are imported when a row's function is called, so parsing a config
(the CLI does it before any upload) does not load torch.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.trainer.context import JobContext, JobResult, MetricValue
from services.trainer.optimizer import check_optimizer
from tunewire.config.ecd import parse_ecd
from tunewire.config.schema import ConfigError
from tunewire.config.trainer import BITSANDBYTES_OPTIMIZERS
from tunewire.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:  # for annotations only: the CLI resolves configs without torch or pandas
    import pandas as pd

    from services.trainer.datasets import DatasetStore
    from tunewire.heads import FeatureOutput

    # (outputs per feature, metrics, Ludwig's test_statistics.json): the last two with
    # `evaluate`.
    Predictions = tuple[list[FeatureOutput], list[MetricValue], dict]


@dataclass(frozen=True)
class PredictRequest:
    """What prediction from an artifact may use; each model type takes the parts it needs."""

    artifact: Path
    data: pd.DataFrame
    evaluate: bool
    # The embedder client, asked for only by predictive artifacts and semantic retrieval.
    embedder: Callable[[], Any]
    generation_overrides: dict | None = None
    batch_size: int = 0  # rows per forward pass; 0: the model's own
    model_names: Mapping[str, str] = field(default_factory=dict)  # --model NAME=PATH


@dataclass(frozen=True)
class AdmissionChecks:
    """What a model type's own admission checks may use."""

    datasets: DatasetStore
    labelled: list[str]  # the ids of the job's data sets whose labels train or select the model
    embedder: Callable[[], Any] | None  # the embedder client, made on first use
    embedder_address: str


@dataclass(frozen=True)
class ModelType:
    name: str
    parse: Callable[[dict], Any]  # raw config -> resolved config (every default written)
    admit: Callable[[Any, AdmissionChecks], None]  # checks needing the data or other services
    # The whole run of an admitted job: in process through `run_recipe` (ecd), or by starting
    # torchrun workers and relaying their events (llm).
    run: Callable[[JobContext], JobResult]
    predict: Callable[[PredictRequest], Predictions]


# ------------------------------------------------------------------------------------ ecd
def _admit_ecd(config: Any, checks: AdmissionChecks) -> None:
    from services.trainer.recipes.predictive.admission import check_encoders, check_labels

    check_optimizer(config.trainer.optimizer)
    check_labels(config, checks.datasets, checks.labelled)
    check_encoders(config, checks.embedder, checks.embedder_address)


def _run_ecd(ctx: JobContext) -> JobResult:
    from services.trainer.recipes.predictive.recipe import run_predictive_job

    return run_predictive_job(ctx)


def _predict_ecd(req: PredictRequest) -> Predictions:
    from services.trainer.recipes.predictive.predict import predict_predictive

    return predict_predictive(
        req.artifact, req.data, req.embedder(), req.evaluate, req.batch_size, req.model_names
    )


# ------------------------------------------------------------------------------------ llm
def _parse_llm(raw: dict) -> Any:
    """The llm schema is imported by the first llm config (its ~0.04 s of dataclasses are not
    the CLI's to pay for an ecd job)."""
    from tunewire.config.llm import parse_llm

    return parse_llm(raw)


def _admit_llm(config: Any, checks: AdmissionChecks) -> None:
    """The optimizer, and a semantic retrieval encoder the embedder must load; the worker
    checks the model and the devices when it starts."""
    retrieval = config.prompt.retrieval
    if retrieval.type == "semantic" and checks.embedder is not None:
        from services.trainer.encoder_check import check_encoder_loads
        from services.trainer.recipes.generative.retrieval import encoder_spec

        check_encoder_loads(
            checks.embedder,
            encoder_spec(retrieval.model_name),
            "prompt.retrieval.model_name",
            checks.embedder_address,
        )
    if config.trainer.precision == "fp8":
        _check_fp8_can_run()
    if getattr(config.adapter, "init_lora_weights", None) == "loftq":
        _check_bitsandbytes_can_run(
            config,
            "loftq computes the adapter against a 4-bit bitsandbytes base",
            "adapter.init_lora_weights",
        )
    if config.trainer.optimizer.type in BITSANDBYTES_OPTIMIZERS:
        # Built for llm (the worker needs CUDA and bitsandbytes, and says so otherwise too).
        _check_bitsandbytes_can_run(
            config,
            f"optimizer {config.trainer.optimizer.type!r} is a bitsandbytes optimizer (use adamw)",
            "trainer.optimizer.type",
        )
        return
    check_optimizer(config.trainer.optimizer)


def _check_fp8_can_run() -> None:
    """torchao's float8 training needs torchao and a GPU of compute capability 8.9+: refused at
    admission where the job's workers (started on this machine, in its environment) lack them."""
    import torch

    from services.trainer.recipes.generative import fp8

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    why = fp8.unavailable(device)
    if why is not None:
        raise FailedPrecondition(why, field="trainer.precision")


def _check_bitsandbytes_can_run(config: Any, why: str, field: str) -> None:
    """What bitsandbytes runs needs a CUDA GPU and the package: refused at admission where the
    job's workers (started on this machine, in its environment) could not run it."""
    import torch

    if not config.backend.trainer.use_gpu:
        raise InvalidArgument(
            f"{why}, which needs a CUDA GPU; backend.trainer.use_gpu is false", field=field
        )
    if not torch.cuda.is_available():
        raise FailedPrecondition(
            f"{why}, which needs a CUDA GPU; this trainer has none", field=field
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise FailedPrecondition(
            f"{why}: the bitsandbytes package is not installed on this trainer", field=field
        )


def _run_llm(ctx: JobContext) -> JobResult:
    from services.trainer.recipes.generative.launch import run_generative_job

    return run_generative_job(ctx)


def _predict_llm(req: PredictRequest) -> Predictions:
    from services.trainer.recipes.generative.predict import predict_generative
    from tunewire.heads import FeatureOutput

    texts, metrics = predict_generative(
        req.artifact,
        req.data,
        req.generation_overrides,
        req.batch_size,
        req.embedder,
        req.model_names,
    )
    name = _generative_output_name(req.artifact)
    metrics = metrics if req.evaluate else []
    statistics: dict = {}  # Ludwig's test statistics: feature -> metric -> value
    for m in metrics:
        statistics.setdefault(m.feature, {})[m.name] = m.value
    return [FeatureOutput(name, texts, None, [])], metrics, statistics


def _generative_output_name(artifact: Path) -> str:
    cfg_path = artifact / "resolved_config.json"
    if cfg_path.exists():
        outs = json.loads(cfg_path.read_text()).get("output_features") or []
        if outs:
            return outs[0].get("name", "output")
    return "output"


MODEL_TYPES: dict[str, ModelType] = {
    t.name: t
    for t in (
        ModelType("ecd", parse_ecd, _admit_ecd, _run_ecd, _predict_ecd),
        ModelType("llm", _parse_llm, _admit_llm, _run_llm, _predict_llm),
    )
}


def model_type(name: str) -> ModelType:
    if not isinstance(name, str) or name not in MODEL_TYPES:
        allowed = ", ".join(repr(n) for n in MODEL_TYPES)
        raise ConfigError(f"{name!r} is not one of {allowed}", field="model_type")
    return MODEL_TYPES[name]


def resolve(raw: dict) -> Any:
    """Validate a user's config (a dict from YAML/JSON) and fill every default; the model type
    picks the schema (ecd when absent)."""
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a mapping", field="config")
    return model_type(raw.get("model_type", "ecd")).parse(raw)


def artifact_model_type(artifact: Path) -> ModelType:
    """A predictive artifact says so in its manifest; anything else is a generative model."""
    manifest = artifact / "tunewire.json"
    kind = json.loads(manifest.read_text()).get("kind") if manifest.exists() else None
    return MODEL_TYPES["ecd" if kind == "predictive" else "llm"]
