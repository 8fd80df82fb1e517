"""TrainerService over gRPC: protobuf in, domain calls, protobuf out. No torch here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

from services.trainer.context import Metrics, Progress, StateChange
from services.trainer.datasets import DatasetRecord
from services.trainer.job_store import JobRecord, StoredEvent
from services.trainer.service import TrainerCore
from tunewire import tensors
from tunewire.auth import current_principal
from tunewire.errors import InvalidArgument, NotFound
from tunewire.json_input import parse_json
from tunewire.server import STREAM_CHUNK_BYTES
from tunewire.streams import client_stream
from tunewire.timestamps import to_timestamp as _ts
from tunewire.v1 import trainer_pb2, trainer_pb2_grpc

_FORMAT_NAMES = {
    trainer_pb2.DATASET_FORMAT_CSV: "csv",
    trainer_pb2.DATASET_FORMAT_TSV: "tsv",
    trainer_pb2.DATASET_FORMAT_JSONL: "jsonl",
    trainer_pb2.DATASET_FORMAT_PARQUET: "parquet",
    trainer_pb2.DATASET_FORMAT_JSON: "json",
    trainer_pb2.DATASET_FORMAT_EXCEL: "excel",
    trainer_pb2.DATASET_FORMAT_FEATHER: "feather",
    trainer_pb2.DATASET_FORMAT_ORC: "orc",
}
_FORMAT_VALUES = {v: k for k, v in _FORMAT_NAMES.items()}
_STATES = {
    "QUEUED": trainer_pb2.Job.QUEUED,
    "RUNNING": trainer_pb2.Job.RUNNING,
    "SUCCEEDED": trainer_pb2.Job.SUCCEEDED,
    "FAILED": trainer_pb2.Job.FAILED,
    "CANCELLED": trainer_pb2.Job.CANCELLED,
}


def dataset_proto(rec: DatasetRecord) -> trainer_pb2.Dataset:
    return trainer_pb2.Dataset(
        id=rec.id,
        filename=rec.filename,
        format=_FORMAT_VALUES.get(rec.format, 0),
        rows=rec.rows,
        columns=rec.columns,
        size_bytes=rec.size_bytes,
        sha256=rec.sha256,
        owner=rec.owner,
    )


def metric_proto(m: dict) -> trainer_pb2.Metric:
    return trainer_pb2.Metric(
        split=m["split"], feature=m["feature"], name=m["name"], value=float(m["value"])
    )


def job_proto(rec: JobRecord) -> trainer_pb2.Job:
    job = trainer_pb2.Job(
        id=rec.id,
        state=_STATES[rec.state],
        config_json=json.dumps(rec.config),
        dataset_id=rec.dataset_id,
        training_set_id=rec.training_set_id,
        validation_set_id=rec.validation_set_id,
        test_set_id=rec.test_set_id,
        request_id=rec.request_id,
        metrics=[metric_proto(m) for m in rec.metrics],
        artifact_path=rec.artifact_path,
        error=rec.error,
        upload_to=rec.upload_to,
        upload_id=rec.upload_id,
        attempts=rec.attempts,
        owner=rec.owner,
    )
    for name in ("create_time", "start_time", "end_time"):
        ts = _ts(getattr(rec, name))
        if ts is not None:
            getattr(job, name).CopyFrom(ts)
    return job


def event_proto(job_id: str, stored: StoredEvent) -> trainer_pb2.JobEvent:
    out = trainer_pb2.JobEvent(job_id=job_id, sequence=stored.sequence, time=_ts(stored.time))
    event = stored.event()
    if isinstance(event, StateChange):
        out.state_change.state = _STATES[event.state]
        out.state_change.message = event.message
    elif isinstance(event, Progress):
        out.progress.CopyFrom(trainer_pb2.JobEvent.Progress(**event.to_dict()))
    elif isinstance(event, Metrics):
        out.metrics.metrics.extend(metric_proto(m.__dict__) for m in event.metrics)
    else:
        out.log.message = event.message
    return out


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, core: TrainerCore) -> None:
        self.core = core

    @client_stream  # read on the event loop; parsed and written in a thread of its own
    def UploadDataset(self, request_iterator, context):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "metadata":
            raise InvalidArgument("the first message must carry the metadata", field="metadata")
        meta = first.metadata
        if not meta.filename:
            raise InvalidArgument("is required", field="metadata.filename")
        chunks = (req.chunk for req in request_iterator if req.WhichOneof("part") == "chunk")
        rec = self.core.datasets.put(
            chunks,
            meta.filename,
            _FORMAT_NAMES.get(meta.format),
            cancelled=lambda: not context.is_active(),
        )
        return dataset_proto(rec)

    def GetDataset(self, request, context):
        return dataset_proto(self.core.datasets.get(request.id))

    def DeleteDataset(self, request, context):
        if not request.dataset_id:
            raise InvalidArgument("is required", field="dataset_id")
        self.core.dataset_lifecycle.delete(request.dataset_id, current_principal())
        return trainer_pb2.DeleteDatasetResponse()

    def CreateJob(self, request, context):
        if not request.config_json:
            raise InvalidArgument("is required", field="config_json")
        raw = parse_json(request.config_json, "config_json")
        rec = self.core.create_job(
            raw,
            dataset_id=request.dataset_id,
            training_set_id=request.training_set_id,
            validation_set_id=request.validation_set_id,
            test_set_id=request.test_set_id,
            request_id=request.request_id,
            upload_to=request.upload_to,
        )
        return job_proto(rec)

    def GetJob(self, request, context):
        return job_proto(self.core.jobs.get(request.id))

    def ListJobs(self, request, context):
        jobs = self.core.jobs.visible()
        size = request.page_size if request.page_size > 0 else 100
        try:
            start = int(request.page_token or 0)
        except ValueError:
            raise InvalidArgument("malformed page token", field="page_token") from None
        page = jobs[start : start + size]
        token = str(start + size) if start + size < len(jobs) else ""
        return trainer_pb2.ListJobsResponse(
            jobs=[job_proto(j) for j in page], next_page_token=token
        )

    def CancelJob(self, request, context):
        return job_proto(self.core.runner.cancel(request.id))

    async def WatchJob(self, request, context) -> AsyncIterator[trainer_pb2.JobEvent]:
        """Replays the job's events, then follows them until it ends; on the event loop, so a
        watcher holds no thread while it waits (tunewire.records.RecordStore.watch)."""
        async for ev in self.core.jobs.watch(request.id, request.from_sequence):
            yield event_proto(request.id, ev)

    def Predict(self, request, context):
        overrides = None
        if request.generation_config_json:
            overrides = parse_json(request.generation_config_json, "generation_config_json")
        features, metrics, statistics = self.core.predict(
            request.model,
            request.dataset_id,
            request.evaluate,
            overrides,
            split=request.split,
            batch_size=request.batch_size,
        )
        out = trainer_pb2.PredictResponse(
            metrics=[metric_proto(m.__dict__) for m in metrics],
            test_statistics_json=json.dumps(statistics) if statistics else "",
        )
        for f in features:
            fp = trainer_pb2.FeaturePredictions(
                feature=f.feature, predictions=f.predictions, class_names=f.class_names
            )
            if f.probabilities is not None:
                fp.probabilities.CopyFrom(tensors.to_proto(f.probabilities))
            out.features.append(fp)
            out.rows = len(f.predictions)
        return out

    def DownloadArtifact(self, request, context):
        root = self.core.artifact_dir(request.job_id)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        if request.paths:
            present = {p.relative_to(root).as_posix(): p for p in files}
            for i, wanted in enumerate(request.paths):
                if wanted not in present:
                    raise NotFound(
                        f"the artifact of {request.job_id} has no file {wanted!r}",
                        field=f"paths[{i}]",
                    )
            files = [present[w] for w in dict.fromkeys(request.paths)]
        for path in files:
            rel = path.relative_to(root).as_posix()
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                chunk = fh.read(STREAM_CHUNK_BYTES)
                while True:
                    nxt = fh.read(STREAM_CHUNK_BYTES)
                    digest.update(chunk)
                    last = not nxt
                    yield trainer_pb2.FileChunk(
                        path=rel, data=chunk, last=last, sha256=digest.hexdigest() if last else ""
                    )
                    if last:
                        break
                    chunk = nxt
