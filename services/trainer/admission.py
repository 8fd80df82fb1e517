"""Admission: a job's config parsed, validated and resolved once, and the data it names checked,
before the job is recorded; and, when it runs, its splits loaded from those data sets.

Everything a job can be refused for is found here, at create time, with the field path: the
config (through the model type's schema), the data sets and their columns, the split column, and
the model type's own checks (for a predictive job, labels that parse and encoders the embedder can
load). The resolved config is what the job records and its recipe receives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from services.trainer.datasets import DatasetStore
from services.trainer.model_types import AdmissionChecks, model_type, resolve
from services.trainer.splits import split_dataset
from tunewire.auth import Principal
from tunewire.errors import InvalidArgument
from tunewire.model_roots import ModelRoots

# The embedder's default --max-text-bytes: a longer text cell is refused at admission.
DEFAULT_MAX_TEXT_BYTES = 1 << 20

Splits = tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]


@dataclass(frozen=True)
class JobInputs:
    """The data sets a job names: one to split, or a training set with optional others."""

    dataset_id: str = ""
    training_set_id: str = ""
    validation_set_id: str = ""
    test_set_id: str = ""

    def named(self) -> dict[str, str]:
        """Field name -> data set id, for those given."""
        ids = {
            "dataset_id": self.dataset_id,
            "training_set_id": self.training_set_id,
            "validation_set_id": self.validation_set_id,
            "test_set_id": self.test_set_id,
        }
        return {k: v for k, v in ids.items() if v}

    def labelled(self) -> list[str]:
        """The data sets whose labels train or select the model (a test set may lack them)."""
        return [i for i in (self.dataset_id, self.training_set_id, self.validation_set_id) if i]


class Admission:
    """Admits jobs against the trainer's data sets (and its embedder, for model types that
    need it); `embedder` makes the shared client on first use."""

    def __init__(
        self,
        datasets: DatasetStore,
        embedder: Callable[[], Any] | None = None,
        embedder_address: str = "",
        roots: ModelRoots | None = None,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        check_owner: Callable[[str, str], None] | None = None,
    ) -> None:
        """`roots`: the models this trainer's jobs may load (default: any, embedded mode);
        `max_text_bytes`: the longest text cell a job may hold; `check_owner(path, field)`:
        refuses a local model that is another principal's job's artifact."""
        self.datasets = datasets
        self.embedder = embedder
        self.embedder_address = embedder_address
        self.roots = roots or ModelRoots.anywhere()
        self.max_text_bytes = max_text_bytes
        self.check_owner = check_owner

    def admit(self, raw_config: dict, inputs: JobInputs, upload_to: str = "") -> Any:
        """The resolved config of a job that may run; raises the first thing that is wrong."""
        config = resolve(raw_config)
        self._check_models(config)
        self._check_datasets(config, inputs)
        if upload_to and getattr(getattr(config, "trainer", None), "type", "") == "none":
            raise InvalidArgument(
                "trainer.type is none (zero-shot): nothing is trained, so there is nothing to "
                "upload; set trainer.type: finetune, or leave upload_to empty",
                field="upload_to",
            )
        self._check_text_cells(config, inputs)
        checks = AdmissionChecks(
            self.datasets, inputs.labelled(), self.embedder, self.embedder_address
        )
        model_type(config.model_type).admit(config, checks)
        return config

    def _check_text_cells(self, config: Any, inputs: JobInputs) -> None:
        """No text cell longer than `max_text_bytes`: the embedder refuses one (its
        --max-text-bytes, 1 MiB by default), and a tokenizer would hold it whole, so a job
        holding one fails here, naming the column and row, not in the middle of its run."""
        columns = {
            path: f.column for path, f in _features(config) if getattr(f, "type", "") == "text"
        }
        if not columns:
            return
        for field_name, ds_id in inputs.named().items():
            df = self.datasets.load(ds_id)
            for path, column in columns.items():
                if column not in df.columns:
                    continue
                text = df[column].astype(str)
                long = text[text.str.len() > self.max_text_bytes // 4]  # else under the limit
                if long.empty:
                    continue
                sizes = long.str.encode("utf-8").str.len()
                over = sizes[sizes > self.max_text_bytes]
                if not over.empty:
                    row = int(over.index[0])
                    raise InvalidArgument(
                        f"row {row} of column {column!r} in data set {ds_id} ({field_name}) is "
                        f"{int(over.iloc[0])} bytes; texts are at most {self.max_text_bytes}",
                        field=path,
                    )

    def _check_models(self, config: Any) -> None:
        """Models the trainer itself loads (an llm's base model, an adapted encoder) must be
        under its model roots or allowed Hub ids: checked here, not by the model loader when
        the job runs (`base_model: /etc` failed then, with a raw multi-line error). Frozen
        encoders are the embedder's to check, against its own roots."""
        base_model = getattr(config, "base_model", None)
        if isinstance(base_model, str):
            self._check_model(base_model, "base_model")
        for i, f in enumerate(getattr(config, "input_features", None) or []):
            encoder = getattr(f, "encoder", None)
            if encoder is not None and getattr(encoder, "trainable", False) and encoder.model:
                self._check_model(encoder.model, f"input_features[{i}].encoder.{encoder.model_key}")

    def _check_model(self, reference: str, field: str) -> None:
        """Under the roots, and not another principal's artifact (a job trained on it would
        hand that principal's weights to this one)."""
        self.roots.check(reference, field)
        if self.check_owner is not None and self.roots.is_local(reference):
            self.check_owner(reference, field)

    def _check_datasets(self, config: Any, inputs: JobInputs) -> None:
        if not inputs.dataset_id and not inputs.training_set_id:
            raise InvalidArgument(
                "give a data set (dataset_id) or a training set", field="dataset_id"
            )
        if inputs.dataset_id and inputs.training_set_id:
            raise InvalidArgument(
                "give either dataset_id or training_set_id, not both", field="training_set_id"
            )
        columns_needed = _columns_needed(config)
        for field_name, ds_id in inputs.named().items():
            record = self.datasets.get(ds_id)
            for path, column in columns_needed.items():
                label = path.startswith("output_features")
                if column not in record.columns and not (label and field_name == "test_set_id"):
                    raise InvalidArgument(
                        f"column {column!r} is not in data set {ds_id} "
                        f"(columns: {', '.join(record.columns)})",
                        field=path,
                    )
        split_config = getattr(getattr(config, "preprocessing", None), "split", None)
        if (
            inputs.dataset_id
            and split_config is not None
            and split_config.type in ("fixed", "stratify", "hash")
        ):
            record = self.datasets.get(inputs.dataset_id)
            if split_config.column not in record.columns:
                raise InvalidArgument(
                    f"split column {split_config.column!r} is not in the data set",
                    field="preprocessing.split.column",
                )

    def load_splits(self, config: Any, inputs: JobInputs) -> Splits:
        """(train, validation, test): the one data set sampled and split as the config says, or
        the sets given."""
        if inputs.dataset_id:
            return split_dataset(self.datasets.load(inputs.dataset_id), config)

        def load(ds_id: str) -> pd.DataFrame | None:
            return self.datasets.load(ds_id) if ds_id else None

        return (
            self.datasets.load(inputs.training_set_id),
            load(inputs.validation_set_id),
            load(inputs.test_set_id),
        )


def _features(config: Any) -> list[tuple[str, Any]]:
    """(config path of its column, feature) for every input and output feature."""
    out = []
    for kind in ("input_features", "output_features"):
        for i, f in enumerate(getattr(config, kind, []) or []):
            out.append((f"{kind}[{i}].column", f))
    return out


def check_namespace(principal: Principal, upload_to: str) -> None:
    """The gateway would refuse this upload after the whole job has run: refuse it now."""
    principal.require_namespace(upload_to, "upload_to")


def _columns_needed(config: Any) -> dict[str, str]:
    """config path -> column, for every feature the config reads (a config that knows better,
    e.g. an llm prompt built from other columns, says so itself)."""
    if hasattr(config, "columns_read"):
        return config.columns_read()
    out = {}
    for i, f in enumerate(getattr(config, "input_features", []) or []):
        out[f"input_features[{i}].column"] = f.column
    for i, f in enumerate(getattr(config, "output_features", []) or []):
        out[f"output_features[{i}].column"] = f.column
    return out
