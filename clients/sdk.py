"""The tunewire Python SDK: typed clients for the embedder and the trainer.

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

import functools
import hashlib
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from clients.embed_wire import split_response
from tunewire import tensors
from tunewire.errors import TunewireError, from_rpc_error
from tunewire.server import STREAM_CHUNK_BYTES, channel_options
from tunewire.tls import ClientSecurity
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tunewire.wire import embed_request, text_batches

POOLINGS = {
    "mean": embedder_pb2.POOLING_MEAN,
    "avg": embedder_pb2.POOLING_MEAN,
    "cls": embedder_pb2.POOLING_CLS,
    "cls_pooled": embedder_pb2.POOLING_CLS,
    "last": embedder_pb2.POOLING_LAST,
    "max": embedder_pb2.POOLING_MAX,
    "sum": embedder_pb2.POOLING_SUM,
}
TERMINAL_STATES = (trainer_pb2.Job.SUCCEEDED, trainer_pb2.Job.FAILED, trainer_pb2.Job.CANCELLED)


def rpc_errors(fn):
    """Turn grpc.RpcError into the domain error the server sent."""

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return inner


def _rpc_iter(fn):
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    return inner


def connect(address: str, security: ClientSecurity | None = None) -> grpc.Channel:
    """A channel with the servers' message limits. `security` (default: from TUNEWIRE_TOKEN,
    TUNEWIRE_TOKEN_FILE, TUNEWIRE_TLS_CA/_CERT/_KEY) adds TLS and a bearer token; with none of
    those set the channel is plain, for loopback and in-cluster use. A channel made from certificate
    files follows them: a rotated client certificate, key or CA is used from the next call on."""
    target, extra = address, []
    try:  # headless-Service aware targets (round_robin) where clients.resolve exists
        from clients.resolve import channel_options_for, channel_target

        target, extra = channel_target(address), channel_options_for(address)
    except ImportError:
        pass
    security = security or ClientSecurity.from_env()
    return security.channel(target, [*channel_options(), *extra])


@dataclass(frozen=True)
class EncoderSpec:
    """Everything besides the text that determines a vector (and so its cache key)."""

    model: str
    pooling: str = "mean"
    max_length: int = 0
    normalize: bool = False
    dtype: str = "float32"
    layer: int = 0
    instruction: str = ""
    revision: str = ""

    def to_proto(self) -> embedder_pb2.EncoderSpec:
        if self.pooling not in POOLINGS:
            raise TunewireError(f"pooling must be one of {', '.join(POOLINGS)}", field="pooling")
        if self.dtype not in tensors.DTYPE_NAMES:
            raise TunewireError("dtype must be float32 or float16", field="dtype")
        return embedder_pb2.EncoderSpec(
            model=self.model,
            revision=self.revision,
            pooling=POOLINGS[self.pooling],
            max_length=self.max_length,
            normalize=self.normalize,
            dtype=tensors.DTYPE_NAMES[self.dtype],
            layer=self.layer,
            instruction=self.instruction,
        )


@dataclass
class EmbedResult:
    vectors: np.ndarray
    cache_hits: int
    cache_misses: int
    fingerprint: str


@dataclass(frozen=True)
class EmbedChunk:
    """One StreamEmbed response: the vectors of a request's texts offset..offset+len-1."""

    vectors: np.ndarray  # read-only, a view of the received message: no copy was made
    offset: int
    last: bool  # the request's last chunk
    cache_hits: int  # on a request's first chunk only, so that sums count each text once
    cache_misses: int
    fingerprint: str


def _check_answered(vectors: int, texts: int) -> None:
    """A request must get a vector per text; a server that predates `EmbedRequest.joined`, for
    one, reads a joined request as no texts."""
    if vectors != texts:
        raise TunewireError(
            f"the embedder answered {vectors} vectors for {texts} texts", reason="INCOMPLETE_ANSWER"
        )


class EmbedderClient:
    def __init__(self, address: str, channel: grpc.Channel | None = None) -> None:
        self.address = address
        self.channel = channel or connect(address)
        self.stub = embedder_pb2_grpc.EmbedderServiceStub(self.channel)
        # StreamEmbed with the vectors left in the received buffers (clients.embed_wire).
        self._stream_embed = self.channel.stream_stream(
            "/tunewire.v1.EmbedderService/StreamEmbed",
            request_serializer=embedder_pb2.EmbedRequest.SerializeToString,
            response_deserializer=split_response,
            _registered_method=True,
        )

    @rpc_errors
    def embed(
        self, texts: list[str], spec: EncoderSpec, timeout: float | None = None
    ) -> EmbedResult:
        resp = self.stub.Embed(embed_request(spec.to_proto(), texts), timeout=timeout)
        vectors = tensors.from_proto(resp.embeddings)
        _check_answered(len(vectors), len(texts))
        return EmbedResult(vectors, resp.cache_hits, resp.cache_misses, resp.fingerprint)

    @_rpc_iter
    def stream(
        self,
        texts: list[str],
        spec: EncoderSpec,
        batch_size: int = 256,
        cancelled: Callable[[], bool] | None = None,
        timeout: float | None = None,
    ) -> Iterator[EmbedChunk]:
        """The vectors of `texts` in order, chunk by chunk as they arrive, over one StreamEmbed
        call of at most `batch_size` texts and `DEFAULT_REQUEST_BYTES` of text a message (so
        long texts never make a message past the limit); nothing is sent once `cancelled()` is
        true. Each chunk's vectors are a view of the message gRPC received (see
        clients.embed_wire)."""
        proto_spec = spec.to_proto()
        sent: deque[int] = deque()  # texts of each request sent, in order

        def requests() -> Iterator[embedder_pb2.EmbedRequest]:
            for start, end in text_batches(texts, batch_size):
                if cancelled is not None and cancelled():
                    return
                sent.append(end - start)
                yield embed_request(proto_spec, texts[start:end])

        for resp, data in self._stream_embed(requests(), timeout=timeout):
            chunk = EmbedChunk(
                tensors.from_data(resp.embeddings, data),
                resp.offset,
                resp.last,
                resp.cache_hits,
                resp.cache_misses,
                resp.fingerprint,
            )
            if chunk.last:
                rows = chunk.offset + len(chunk.vectors)
                _check_answered(rows, sent.popleft())
            yield chunk

    @rpc_errors
    def embed_many(
        self,
        texts: list[str],
        spec: EncoderSpec,
        batch_size: int = 256,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> EmbedResult:
        """Embed any number of texts over one StreamEmbed call, `batch_size` texts a message."""
        parts: list[np.ndarray] = []
        hits = misses = done = 0
        fingerprint = ""
        if not texts:
            raise TunewireError("no texts to embed", field="texts")
        for chunk in self.stream(texts, spec, batch_size, cancelled):
            parts.append(chunk.vectors)
            hits += chunk.cache_hits
            misses += chunk.cache_misses
            fingerprint = chunk.fingerprint
            done += len(chunk.vectors)
            if progress is not None:
                progress(done, len(texts))
        if done != len(texts):
            raise TunewireError("embedding stream ended early (cancelled)", reason="CANCELLED")
        return EmbedResult(np.concatenate(parts), hits, misses, fingerprint)

    @rpc_errors
    def info(self, spec: EncoderSpec) -> embedder_pb2.GetEncoderInfoResponse:
        return self.stub.GetEncoderInfo(embedder_pb2.GetEncoderInfoRequest(encoder=spec.to_proto()))

    @rpc_errors
    def cache_stats(self) -> embedder_pb2.GetCacheStatsResponse:
        return self.stub.GetCacheStats(embedder_pb2.GetCacheStatsRequest())

    def predict_rows(self, model: str, rows, timeout: float | None = None):
        """Online prediction with a predictive model (a job id or an artifact directory the
        embedder may read): `rows` a DataFrame, a list of dicts or one dict (column → value).
        Returns a DataFrame of Ludwig's columns: `<f>_predictions`, and for classifiers
        `<f>_probability`, `<f>_probabilities` and `<f>_probabilities_<class>`. Nothing is
        stored on the servers but the texts' vectors in the embedding cache."""
        import pandas as pd

        return pd.DataFrame(self.predict_columns(model, _columns(rows), timeout))

    @rpc_errors
    def predict_columns(
        self, model: str, columns: dict[str, list], timeout: float | None = None
    ) -> dict[str, list]:
        """`predict_rows` column-wise, without pandas: input column → values in, Ludwig-named
        output column → values out (what an HTTP server answers with)."""
        request = embedder_pb2.PredictRowsRequest(model=model)
        for name, values in columns.items():
            column = request.columns.add(name=str(name))
            for i, value in enumerate(values):
                cell = _cell(value)
                if cell is None:
                    column.missing.append(i)
                    cell = ""
                column.values.append(cell)
        return ludwig_columns(self.stub.PredictRows(request, timeout=timeout))

    def close(self) -> None:
        self.channel.close()


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

    @_rpc_iter
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
    ) -> trainer_pb2.PredictResponse:
        return self.stub.Predict(
            trainer_pb2.PredictRequest(
                model=model,
                dataset_id=dataset_id,
                evaluate=evaluate,
                generation_config_json=json.dumps(generation_config) if generation_config else "",
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
    """PredictResponse → a pandas DataFrame: `<feature>_predictions` and
    `<feature>_probabilities_<class>` columns, Ludwig's naming."""
    import pandas as pd

    cols: dict = {}
    for feat in resp.features:
        cols[f"{feat.feature}_predictions"] = list(feat.predictions)
        if feat.probabilities.shape:
            probs = tensors.from_proto(feat.probabilities)
            cols[f"{feat.feature}_probability"] = probs.max(axis=1)
            for j, name in enumerate(feat.class_names):
                cols[f"{feat.feature}_probabilities_{name}"] = probs[:, j]
    return pd.DataFrame(cols)


def ludwig_columns(resp) -> dict[str, list]:
    """A PredictRowsResponse (or PredictResponse) → Ludwig-named output columns."""
    from tunewire.heads import FeatureOutput
    from tunewire.heads import ludwig_columns as columns

    return columns(
        [
            FeatureOutput(
                f.feature,
                list(f.predictions),
                tensors.from_proto(f.probabilities) if f.probabilities.shape else None,
                list(f.class_names),
            )
            for f in resp.features
        ]
    )


def _columns(rows) -> dict[str, list]:
    """A DataFrame, a list of dicts or one dict → column name → values (None where absent)."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
        return {str(c): rows[c].tolist() for c in rows.columns}
    if isinstance(rows, dict):
        rows = [rows]
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {name: [row.get(name) for row in rows] for name in names}


def _cell(value) -> str | None:
    """A value as the trainer reads a CSV cell: None/NaN missing, 3.0 as "3", True as "True"."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return _cell(value.item())
    return str(value)


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(STREAM_CHUNK_BYTES):
            yield chunk


__all__ = [
    "EmbedderClient",
    "EmbedChunk",
    "EmbedResult",
    "EncoderSpec",
    "TrainerClient",
    "connect",
    "metrics_dict",
    "predictions_frame",
    "ludwig_columns",
    "TERMINAL_STATES",
]
