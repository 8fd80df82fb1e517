"""The trainer's domain object: data sets, jobs, prediction and artifact lookup, without gRPC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog

from services.trainer.admission import Admission
from services.trainer.context import MetricValue
from services.trainer.dataset_retention import DatasetLifecycle, Retention
from services.trainer.datasets import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_MAX_DATASET_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
    DatasetStore,
)
from services.trainer.job_store import TERMINAL, JobRecord, JobStore
from services.trainer.model_types import PredictRequest, artifact_model_type
from services.trainer.runner import DEFAULT_MAX_EVENTS_PER_JOB, JobRunner
from tunewire.auth import current_principal
from tunewire.clients.hub_gateway import HubGatewayClient
from tunewire.clients.sharding import embedder_client
from tunewire.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from tunewire.model_names import rename_models
from tunewire.model_roots import ModelRoots, under
from tunewire.paths import check_path_text
from tunewire.v1 import hub_gateway_pb2

log = structlog.get_logger(__name__)


class TrainerCore:
    def __init__(
        self,
        data_dir: Path,
        *,
        embedder_address: str | None,
        hub_gateway_address: str | None = None,
        workers: int = 1,
        allowed_model_roots: list[Path] | None = None,
        allow_any_model_path: bool = False,
        hub_models: bool = True,
        max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES,
        max_dataset_memory_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        dataset_cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_job_seconds: float = 0.0,
        max_queued_jobs: int = 0,
        max_events_per_job: int = DEFAULT_MAX_EVENTS_PER_JOB,
        model_names: dict[str, str] | None = None,
        dataset_retention: Retention | None = None,
    ) -> None:
        """`model_names`: NAME → PATH of the encoders named at start; a config may say NAME, and
        a registered PATH is readable as if under a model root."""
        self.data_dir = Path(data_dir)
        self.model_names = dict(model_names or {})
        self.datasets = DatasetStore(
            self.data_dir / "datasets",
            max_bytes=max_dataset_bytes,
            max_frame_bytes=max_dataset_memory_bytes,
            cache_bytes=dataset_cache_bytes,
        )
        self.jobs = JobStore(self.data_dir / "jobs")
        self.dataset_lifecycle = DatasetLifecycle(
            self.datasets,
            lambda: self._job_datasets(only_active=False),
            lambda: self._job_datasets(only_active=True),
            dataset_retention,
        )
        self.artifacts_root = self.data_dir / "artifacts"
        self.embedder_address = embedder_address
        self.hub_gateway_address = hub_gateway_address
        self._embedder = None
        self.allowed_model_roots = [
            self.artifacts_root,
            self.data_dir / "models",
            *(allowed_model_roots or []),
            *(Path(p) for p in self.model_names.values() if Path(p).is_absolute()),
        ]
        self.allow_any_model_path = allow_any_model_path
        # What jobs may load here (base models, adapted encoders): tunewire/model_roots.py.
        self.model_roots = (
            ModelRoots(None, hub_models)
            if allow_any_model_path
            else ModelRoots.of(self.allowed_model_roots, hub_models)
        )
        self.admission = Admission(
            self.datasets,
            self.embedder if embedder_address else None,
            embedder_address or "",
            roots=self.model_roots,
            check_owner=lambda ref, field: self._check_artifact_owner(
                Path(ref).expanduser().resolve(), ref, field
            ),
        )
        self.runner = JobRunner(
            self.jobs,
            self.admission,
            self.artifacts_root,
            embedder_factory=self.embedder if embedder_address else None,
            uploader=self._upload if hub_gateway_address else None,
            workers=workers,
            max_job_seconds=max_job_seconds,
            max_queued_jobs=max_queued_jobs,
            max_events_per_job=max_events_per_job,
        )

    def start(self) -> None:
        self.runner.start()
        self.dataset_lifecycle.start()

    def _job_datasets(self, only_active: bool) -> set[str]:
        """The data set ids job records name (only_active: of queued or running jobs)."""
        out: set[str] = set()
        for rec in self.jobs.all():
            if only_active and rec.state in TERMINAL:
                continue
            ids = (rec.dataset_id, rec.training_set_id, rec.validation_set_id, rec.test_set_id)
            out.update(i for i in ids if i)
        return out

    def set_hub_gateway(self, address: str) -> None:
        """Point uploads at a gateway started after the trainer (embedded mode)."""
        self.hub_gateway_address = address
        self.runner.uploader = self._upload

    def close(self) -> None:
        self.dataset_lifecycle.stop()
        self.runner.stop()
        if self._embedder is not None:
            self._embedder.close()

    def embedder(self):
        """One shared client (channels are thread-safe); several comma-separated replicas are
        sharded by cache key."""
        if self._embedder is None:
            if not self.embedder_address:
                raise FailedPrecondition(
                    "this trainer has no embedder configured", field="embedder"
                )
            self._embedder = embedder_client(self.embedder_address)
        return self._embedder

    # ------------------------------------------------------------------------------------ jobs
    def create_job(self, raw: dict, **kwargs: Any) -> JobRecord:
        if self.model_names:  # the job's config (and so its artifact) records the path
            raw = rename_models(raw, self.model_names)
        return self.runner.submit(raw, **kwargs)

    # -------------------------------------------------------------------------------- models
    def artifact_dir(self, job_id: str) -> Path:
        rec = self.jobs.get(job_id)
        # artifact_path is set only after the artifact was renamed into place, whole; an
        # upload-on-success reads it just before the job is marked SUCCEEDED.
        if not rec.artifact_path or not Path(rec.artifact_path).is_dir():
            raise FailedPrecondition(
                f"job {job_id} has no artifact (state {rec.state})", field="job_id"
            )
        return Path(rec.artifact_path)

    def resolve_model(self, model: str) -> Path:
        """A job id, or an artifact directory under an allowed root (any path in embedded mode)."""
        if not model:
            raise InvalidArgument("is required", field="model")
        check_path_text(model, "model")
        if model.startswith("job-") and "/" not in model:
            return self.artifact_dir(model)
        path = Path(model).expanduser().resolve()
        if not self.allow_any_model_path and not under(path, self.allowed_model_roots):
            raise PermissionDenied(
                "the trainer may not read models outside its artifact roots", field="model"
            )
        self._check_artifact_owner(path, model)
        if (
            not (path / "tunewire.json").is_file()
            and not (path / "adapter_config.json").is_file()
            and not (path / "config.json").is_file()
        ):
            raise NotFound(f"no model artifact at {model!r}", field="model")
        return path

    def _check_artifact_owner(self, path: Path, model: str, field: str = "model") -> None:
        """A path under the artifacts root is a job's artifact: the job's owner's, like the job
        (NOT_FOUND for another principal, as for a path holding no model)."""
        root = self.artifacts_root.resolve()
        if root not in path.parents or current_principal().sees_all:
            return
        job_id = path.relative_to(root).parts[0]
        try:
            self.jobs.get(job_id)
        except NotFound:
            raise NotFound(f"no model artifact at {model!r}", field=field) from None

    def predict(
        self,
        model: str,
        dataset_id: str,
        evaluate: bool,
        generation_overrides: dict | None,
        split: str = "",
        batch_size: int = 0,
    ) -> tuple[list, list[MetricValue], dict]:
        """(outputs per feature, metrics, Ludwig's test statistics): the last two with
        `evaluate` only."""
        artifact = self.resolve_model(model)
        if not dataset_id:
            raise InvalidArgument("is required", field="dataset_id")
        if batch_size < 0:
            raise InvalidArgument("must be positive (0: the model's own)", field="batch_size")
        df = self.datasets.load(dataset_id)
        kind = artifact_model_type(artifact)
        if split not in ("", "full"):
            from services.trainer.splits import rows_of_split

            config = kind.parse(json.loads((artifact / "resolved_config.json").read_text()))
            df = rows_of_split(df, config, split)
            if df.empty:
                raise InvalidArgument(f"the {split} split of this data set is empty", field="split")
        request = PredictRequest(
            artifact,
            df,
            evaluate,
            self.embedder,
            generation_overrides,
            batch_size,
            self.model_names,
        )
        return kind.predict(request)

    # ---------------------------------------------------------------------------------- upload
    def _upload(self, rec: JobRecord) -> str:
        """Upload a finished job's artifact through the hub gateway; returns the upload id."""
        spec = hub_gateway_pb2.UploadSpec(
            repo_id=rec.upload_to, job_id=rec.id, request_id=f"{rec.id}-upload"
        )
        client = HubGatewayClient(self.hub_gateway_address)
        try:
            return client.upload(spec).id
        finally:
            client.close()
