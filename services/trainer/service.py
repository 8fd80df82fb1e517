"""The trainer's domain object: data sets, jobs, prediction and artifact lookup, without gRPC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog

from services.trainer.context import MetricValue
from services.trainer.datasets import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_MAX_DATASET_BYTES,
    DEFAULT_MAX_FRAME_BYTES,
    DatasetStore,
)
from services.trainer.jobs import JobRecord, JobRunner, JobStore
from tunewire.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TunewireError,
    Unavailable,
)
from tunewire.paths import check_path_text

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
        max_dataset_bytes: int = DEFAULT_MAX_DATASET_BYTES,
        max_dataset_memory_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        dataset_cache_bytes: int = DEFAULT_CACHE_BYTES,
        max_job_seconds: float = 0.0,
        max_queued_jobs: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.datasets = DatasetStore(
            self.data_dir / "datasets",
            max_bytes=max_dataset_bytes,
            max_frame_bytes=max_dataset_memory_bytes,
            cache_bytes=dataset_cache_bytes,
        )
        self.jobs = JobStore(self.data_dir / "jobs")
        self.artifacts_root = self.data_dir / "artifacts"
        self.embedder_address = embedder_address
        self.hub_gateway_address = hub_gateway_address
        self._embedder = None
        self.allowed_model_roots = [self.artifacts_root, *(allowed_model_roots or [])]
        self.allow_any_model_path = allow_any_model_path
        self.runner = JobRunner(
            self.jobs,
            self.datasets,
            self.artifacts_root,
            embedder_factory=self.embedder if embedder_address else None,
            uploader=self._upload if hub_gateway_address else None,
            workers=workers,
            max_job_seconds=max_job_seconds,
            max_queued_jobs=max_queued_jobs,
        )

    def start(self) -> None:
        self.runner.start()

    def set_hub_gateway(self, address: str) -> None:
        """Point uploads at a gateway started after the trainer (embedded mode)."""
        self.hub_gateway_address = address
        self.runner.uploader = self._upload

    def close(self) -> None:
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
            from clients.sharding import embedder_client

            self._embedder = embedder_client(self.embedder_address)
        return self._embedder

    # ------------------------------------------------------------------------------------ jobs
    def create_job(self, raw: dict, **kwargs: Any) -> JobRecord:
        ids = [kwargs.get(k, "") for k in ("dataset_id", "training_set_id", "validation_set_id")]

        def validate(config) -> None:
            self._validate_labels(config, [i for i in ids if i])
            self._validate_encoder(config)

        return self.runner.submit(raw, validate=validate, **kwargs)

    def _validate_labels(self, config, dataset_ids: list[str]) -> None:
        """Parse every labelled output column now, so a bad label fails the create with its row
        and column instead of failing the job later."""
        if config.model_type != "ecd":
            return
        from tunewire.features import encode_output, fit_output

        for ds_id in dataset_ids:
            df = self.datasets.load(ds_id)
            for i, feature in enumerate(config.output_features):
                labels = df[feature.column]
                df_l = df[~(labels.isna() | (labels.astype(str).str.strip() == ""))]
                path = f"output_features[{i}].column"
                encode_output(df_l, fit_output(df_l, feature, path), path)

    def _validate_encoder(self, config) -> None:
        """Ask the embedder to load each frozen text encoder now, so a bad path fails the
        create, not the job. (An adapted encoder loads in the trainer, when the job runs.)"""
        if config.model_type != "ecd":
            return
        from services.trainer.recipes.predictive.embed import encoder_spec
        from tunewire.heads import encoder_refs

        refs = encoder_refs(config)
        for i, feature in enumerate(config.input_features):
            ref = refs.get(feature.name)
            if ref is None or ref.adapted:
                continue
            path = f"input_features[{i}].encoder.{feature.encoder.model_key}"
            try:
                self.embedder().info(encoder_spec(ref))
            except TunewireError as err:
                if (
                    err.reason in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
                    or err.code.name == "UNAVAILABLE"
                ):
                    raise Unavailable(
                        f"the embedder at {self.embedder_address} is unreachable", field="embedder"
                    ) from None
                if err.code.name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                    # The trainer's own credentials, not the client's config, are at fault.
                    raise FailedPrecondition(
                        f"the embedder refused the trainer's token: {err.message}",
                        field="embedder",
                        reason="PEER_AUTH_FAILED",
                    ) from None
                raise InvalidArgument(
                    f"the embedder cannot load this encoder: {err.message}", field=path
                ) from None

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
        if not self.allow_any_model_path and not any(
            path == root.resolve() or root.resolve() in path.parents
            for root in self.allowed_model_roots
        ):
            raise PermissionDenied(
                "the trainer may not read models outside its artifact roots", field="model"
            )
        if (
            not (path / "tunewire.json").is_file()
            and not (path / "adapter_config.json").is_file()
            and not (path / "config.json").is_file()
        ):
            raise NotFound(f"no model artifact at {model!r}", field="model")
        return path

    def predict(
        self, model: str, dataset_id: str, evaluate: bool, generation_overrides: dict | None
    ) -> tuple[list, list[MetricValue]]:
        artifact = self.resolve_model(model)
        if not dataset_id:
            raise InvalidArgument("is required", field="dataset_id")
        df = self.datasets.load(dataset_id)
        manifest_path = artifact / "tunewire.json"
        kind = json.loads(manifest_path.read_text()).get("kind") if manifest_path.exists() else None
        if kind == "predictive":
            from services.trainer.recipes.predictive.predict import predict_predictive

            return predict_predictive(artifact, df, self.embedder(), evaluate)
        try:
            from services.trainer.recipes.generative.predict import predict_generative
        except ImportError:
            raise FailedPrecondition(
                "generative prediction is not built in this trainer", field="model"
            ) from None
        from tunewire.heads import FeatureOutput

        texts, metrics = predict_generative(artifact, df, generation_overrides)
        if not evaluate:
            metrics = []
        name = _generative_output_name(artifact)
        return [FeatureOutput(name, texts, None, [])], metrics

    # ---------------------------------------------------------------------------------- upload
    def _upload(self, rec: JobRecord) -> str:
        """Upload a finished job's artifact through the hub gateway; returns the upload id."""
        try:
            from clients.hub import upload_to_hf_hub
        except ImportError:
            raise FailedPrecondition(
                "the hub gateway client is not available", field="upload_to"
            ) from None
        result = upload_to_hf_hub(
            rec.upload_to,
            None,
            gateway=self.hub_gateway_address,
            job_id=rec.id,
            request_id=f"{rec.id}-upload",
        )
        return getattr(result, "id", "")


def _generative_output_name(artifact: Path) -> str:
    cfg_path = artifact / "resolved_config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        outs = cfg.get("output_features") or []
        if outs:
            return outs[0].get("name", "output")
    return "output"
