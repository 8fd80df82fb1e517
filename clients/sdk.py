"""The tunewire Python SDK: typed clients for the embedder and the trainer.

The embedder's client and the channel helpers live in the shared library (`tunewire.clients`,
where the trainer uses them too) and are re-exported here, so `from clients.sdk import
EmbedderClient, EncoderSpec, TrainerClient` is the one import a user needs.

Every call raises a `tunewire.errors.TunewireError` subclass (InvalidArgument, NotFound, ...) with
the server's reason and field path instead of a raw `grpc.RpcError`. Long work is followed with
iterators (`TrainerClient.watch`), which can be re-attached at any time.

    from clients.sdk import TrainerClient
    trainer = TrainerClient("127.0.0.1:50052")
    ds = trainer.upload_dataset("sms.csv")
    job = trainer.create_job(config, dataset_id=ds.id)
    for event in trainer.watch(job.id): ...
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from tunewire.channel_limits import STREAM_CHUNK_BYTES
from tunewire.clients.rpc import connect, rpc_errors, rpc_iter
from tunewire.errors import TunewireError
from tunewire.v1 import trainer_pb2, trainer_pb2_grpc

if TYPE_CHECKING:
    from tunewire.clients.embedder import (
        POOLINGS,
        EmbedChunk,
        EmbedderClient,
        EmbedResult,
        EncoderSpec,
        ludwig_columns,
    )

# The embedder's client and its types (and numpy with them, ~0.07 s) are imported when first
# named: the CLI's train against a running trainer uses none of them.
_EMBEDDER_NAMES = frozenset(
    {"POOLINGS", "EmbedChunk", "EmbedderClient", "EmbedResult", "EncoderSpec", "ludwig_columns"}
)


def __getattr__(name: str) -> Any:
    if name in _EMBEDDER_NAMES:
        from tunewire.clients import embedder

        return getattr(embedder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


TERMINAL_STATES = (trainer_pb2.Job.SUCCEEDED, trainer_pb2.Job.FAILED, trainer_pb2.Job.CANCELLED)


# Ludwig's `data_format` names (and their aliases) → the wire enum.
_FORMATS = {
    "csv": trainer_pb2.DATASET_FORMAT_CSV,
    "tsv": trainer_pb2.DATASET_FORMAT_TSV,
    "json": trainer_pb2.DATASET_FORMAT_JSON,
    "jsonl": trainer_pb2.DATASET_FORMAT_JSONL,
    "ndjson": trainer_pb2.DATASET_FORMAT_JSONL,
    "parquet": trainer_pb2.DATASET_FORMAT_PARQUET,
    "excel": trainer_pb2.DATASET_FORMAT_EXCEL,
    "xlsx": trainer_pb2.DATASET_FORMAT_EXCEL,
    "feather": trainer_pb2.DATASET_FORMAT_FEATHER,
    "orc": trainer_pb2.DATASET_FORMAT_ORC,
}


class TrainerClient:
    def __init__(self, address: str, channel: grpc.Channel | None = None) -> None:
        self.address = address
        self.channel = channel or connect(address)
        self.stub = trainer_pb2_grpc.TrainerServiceStub(self.channel)

    # Data sets -------------------------------------------------------------------------------
    @rpc_errors
    def upload_dataset(
        self, source, filename: str | None = None, fmt: str | None = None
    ) -> trainer_pb2.Dataset:
        """Stream a file (path), a Hub data set file (`hf://datasets/ORG/NAME[/FILE]`, read
        with the caller's own Hub token), in-memory bytes (with a filename) or a pandas DataFrame
        (sent as Parquet, so its column types arrive as they are) to the trainer. `fmt` is
        Ludwig's `data_format` name; without it the file name's extension says."""
        if fmt and fmt.lower() not in _FORMATS:
            raise TunewireError(
                f"data format {fmt!r} is not one of {', '.join(sorted(_FORMATS))}",
                field="data_format",
            )
        from clients import hf_data

        if hasattr(source, "to_parquet"):
            import io

            buffer = io.BytesIO()
            source.to_parquet(buffer, index=False)
            source, filename, fmt = buffer.getvalue(), filename or "dataframe.parquet", "parquet"
        elif hf_data.is_hub_path(source):
            source = hf_data.fetch(str(source))
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise TunewireError(
                    f"data set file {str(path)!r} does not exist",
                    field="dataset",
                    reason="NOT_FOUND",
                )
            filename = filename or path.name
            data: Iterable[bytes] = _read_chunks(path)
        else:
            if not filename:
                raise TunewireError("filename is required with in-memory bytes", field="filename")
            data = (
                source[i : i + STREAM_CHUNK_BYTES]
                for i in range(0, max(len(source), 1), STREAM_CHUNK_BYTES)
            )

        def requests():
            yield trainer_pb2.UploadDatasetRequest(
                metadata=trainer_pb2.UploadDatasetRequest.Metadata(
                    filename=filename, format=_FORMATS.get((fmt or "").lower(), 0)
                )
            )
            for chunk in data:
                yield trainer_pb2.UploadDatasetRequest(chunk=chunk)

        return self.stub.UploadDataset(requests())

    @rpc_errors
    def delete_dataset(self, dataset_id: str) -> None:
        """Delete one of the caller's data sets (NOT_FOUND for another principal's)."""
        self.stub.DeleteDataset(trainer_pb2.DeleteDatasetRequest(dataset_id=dataset_id))

    @rpc_errors
    def get_dataset(self, dataset_id: str) -> trainer_pb2.Dataset:
        return self.stub.GetDataset(trainer_pb2.GetDatasetRequest(id=dataset_id))

    # Jobs ------------------------------------------------------------------------------------
    @rpc_errors
    def create_job(
        self,
        config: dict,
        *,
        dataset_id: str = "",
        training_set_id: str = "",
        validation_set_id: str = "",
        test_set_id: str = "",
        request_id: str | None = None,
        upload_to: str = "",
    ) -> trainer_pb2.Job:
        return self.stub.CreateJob(
            trainer_pb2.CreateJobRequest(
                config_json=json.dumps(config),
                dataset_id=dataset_id,
                training_set_id=training_set_id,
                validation_set_id=validation_set_id,
                test_set_id=test_set_id,
                request_id=request_id or uuid.uuid4().hex,
                upload_to=upload_to,
            )
        )

    @rpc_errors
    def get_job(self, job_id: str) -> trainer_pb2.Job:
        return self.stub.GetJob(trainer_pb2.GetJobRequest(id=job_id))

    @rpc_errors
    def list_jobs(self, page_size: int = 100) -> list[trainer_pb2.Job]:
        jobs, token = [], ""
        while True:
            resp = self.stub.ListJobs(
                trainer_pb2.ListJobsRequest(page_size=page_size, page_token=token)
            )
            jobs.extend(resp.jobs)
            token = resp.next_page_token
            if not token:
                return jobs

    @rpc_errors
    def cancel_job(self, job_id: str) -> trainer_pb2.Job:
        return self.stub.CancelJob(trainer_pb2.CancelJobRequest(id=job_id))

    @rpc_iter
    def watch(self, job_id: str, from_sequence: int = 0) -> Iterator[trainer_pb2.JobEvent]:
        """Events from `from_sequence` on, until the job ends; safe to call again after a drop."""
        yield from self.stub.WatchJob(
            trainer_pb2.WatchJobRequest(id=job_id, from_sequence=from_sequence)
        )

    def wait(
        self, job_id: str, on_event: Callable[[trainer_pb2.JobEvent], None] | None = None
    ) -> trainer_pb2.Job:
        """Follow a job to its end, re-attaching if the stream drops; returns the final Job."""
        seq = 0
        while True:
            try:
                for event in self.watch(job_id, from_sequence=seq):
                    seq = event.sequence + 1
                    if on_event:
                        on_event(event)
            except TunewireError as err:
                if err.code != grpc.StatusCode.UNAVAILABLE:
                    raise
            job = self.get_job(job_id)
            if job.state in TERMINAL_STATES:
                return job

    # Models ----------------------------------------------------------------------------------
    @rpc_errors
    def predict(
        self,
        model: str,
        dataset_id: str,
        evaluate: bool = False,
        generation_config: dict | None = None,
        split: str = "full",
        batch_size: int = 0,
    ) -> trainer_pb2.PredictResponse:
        """Predictions for `dataset_id` (the rows of one `split`, as the model's own
        preprocessing.split assigns them, Ludwig's `--split`), with metrics and Ludwig's test
        statistics (`test_statistics_json`) when `evaluate`."""
        return self.stub.Predict(
            trainer_pb2.PredictRequest(
                model=model,
                dataset_id=dataset_id,
                evaluate=evaluate,
                generation_config_json=json.dumps(generation_config) if generation_config else "",
                split=split,
                batch_size=batch_size,
            )
        )

    @rpc_errors
    def download_artifact(self, job_id: str, dest: str | Path) -> Path:
        """Write a job's artifact files under `dest`, checking each file's sha256."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        handle, digest, current = None, None, None
        for chunk in self.stub.DownloadArtifact(trainer_pb2.DownloadArtifactRequest(job_id=job_id)):
            if chunk.path != current:
                target = (dest / chunk.path).resolve()
                if dest.resolve() not in target.parents:
                    raise TunewireError(f"refusing artifact path {chunk.path!r}", field="path")
                target.parent.mkdir(parents=True, exist_ok=True)
                handle, digest, current = open(target, "wb"), hashlib.sha256(), chunk.path
            handle.write(chunk.data)
            digest.update(chunk.data)
            if chunk.last:
                handle.close()
                if chunk.sha256 and digest.hexdigest() != chunk.sha256:
                    raise TunewireError(f"checksum mismatch for {chunk.path}", reason="DATA_LOSS")
                current = None
        return dest

    def close(self) -> None:
        self.channel.close()


def metrics_dict(metrics: Iterable[trainer_pb2.Metric]) -> dict:
    """[Metric] → {split: {feature: {name: value}}} (the CLI's --json shape)."""
    out: dict = {}
    for m in metrics:
        out.setdefault(m.split, {}).setdefault(m.feature, {})[m.name] = m.value
    return out


def predictions_frame(resp: trainer_pb2.PredictResponse):
    """PredictResponse → a pandas DataFrame of Ludwig's prediction columns (`ludwig_columns`)."""
    import pandas as pd

    from tunewire.clients.embedder import ludwig_columns

    return pd.DataFrame(ludwig_columns(resp))


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(STREAM_CHUNK_BYTES):
            yield chunk


__all__ = [
    "POOLINGS",
    "EmbedderClient",
    "EmbedChunk",
    "EmbedResult",
    "EncoderSpec",
    "TrainerClient",
    "connect",
    "rpc_errors",
    "metrics_dict",
    "predictions_frame",
    "ludwig_columns",
    "TERMINAL_STATES",
]
