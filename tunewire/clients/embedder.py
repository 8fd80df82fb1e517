"""The embedder's client: embedding (one call, or streamed in chunks that stay in gRPC's buffers)
and online prediction, for an encoder named by `tunewire.encoder_spec.EncoderSpec`. The trainer
uses it as the SDK does."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from tunewire import tensors
from tunewire.clients.embed_wire import split_response
from tunewire.clients.rpc import connect, rpc_errors, rpc_iter
from tunewire.encoder_spec import POOLINGS, EncoderSpec
from tunewire.errors import InvalidArgument, TunewireError
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc
from tunewire.wire import embed_request, text_batches


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


def _embed_result(resp: embedder_pb2.EmbedResponse, texts: int) -> EmbedResult:
    vectors = tensors.from_proto(resp.embeddings)
    _check_answered(len(vectors), texts)
    return EmbedResult(vectors, resp.cache_hits, resp.cache_misses, resp.fingerprint)


class StartedEmbed:
    """An Embed call on its way (`EmbedderClient.embed_started`)."""

    def __init__(self, future: grpc.Future, texts: int) -> None:
        self._future, self._texts = future, texts

    @rpc_errors
    def result(self) -> EmbedResult:
        """The answer (waited for), or the domain error the embedder sent."""
        return _embed_result(self._future.result(), self._texts)

    def cancel(self) -> None:
        """Nobody will read the answer: the embedder drops the call's texts not yet computed."""
        self._future.cancel()


class EmbedderClient:
    def __init__(self, address: str, channel: grpc.Channel | None = None) -> None:
        self.address = address
        self.channel = channel or connect(address)
        self.stub = embedder_pb2_grpc.EmbedderServiceStub(self.channel)
        # StreamEmbed with the vectors left in the received buffers (tunewire.clients.embed_wire).
        self._stream_embed = self.channel.stream_stream(
            "/tunewire.v1.EmbedderService/StreamEmbed",
            request_serializer=embedder_pb2.EmbedRequest.SerializeToString,
            response_deserializer=split_response,
            _registered_method=True,
        )

    @rpc_errors
    def embed(
        self,
        texts: list[str],
        spec: EncoderSpec,
        timeout: float | None = None,
        write_behind: bool = False,
    ) -> EmbedResult:
        """`write_behind`: the computed vectors may enter the embedder's cache after the
        answer (EmbedRequest.write_behind), for a caller that uses them itself."""
        request = embed_request(spec.to_proto(), texts)
        request.write_behind = write_behind
        return _embed_result(self.stub.Embed(request, timeout=timeout), len(texts))

    @rpc_errors
    def embed_started(
        self,
        texts: list[str],
        spec: EncoderSpec,
        timeout: float | None = None,
        write_behind: bool = False,
    ) -> StartedEmbed:
        """`embed`, sent now: its `result()` waits for the answer, so the caller works while the
        embedder computes (the HTTP front door counts the texts' tokens meanwhile)."""
        request = embed_request(spec.to_proto(), texts)
        request.write_behind = write_behind
        return StartedEmbed(self.stub.Embed.future(request, timeout=timeout), len(texts))

    @rpc_iter
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
        tunewire.clients.embed_wire)."""
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
        embedder may read): `rows` a DataFrame, a list of dicts, one dict (column → value) or
        a dict of columns (column → list of values).
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
        return ludwig_columns(self.stub.PredictRows(rows_request(model, columns), timeout=timeout))

    def close(self) -> None:
        self.channel.close()


def rows_request(model: str, columns: dict[str, list]) -> embedder_pb2.PredictRowsRequest:
    """The PredictRows request for input columns (values as CSV cells; None/NaN missing)."""
    request = embedder_pb2.PredictRowsRequest(model=model)
    for name, values in columns.items():
        column = request.columns.add(name=str(name))
        for i, value in enumerate(values):
            if isinstance(value, (list, tuple, dict, set, np.ndarray)):
                raise InvalidArgument(
                    f"row {i} of column {name!r} holds a {type(value).__name__}: a cell is one "
                    "value",
                    field="rows",
                )
            cell = _cell(value)
            if cell is None:
                column.missing.append(i)
                cell = ""
            column.values.append(cell)
    return request


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
    """A DataFrame, a list of dicts, one dict (a row) or a dict of lists (columns) → column
    name → values (None where absent). A dict of lists was one row whose cells were the lists'
    reprs."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # a pandas DataFrame
        return {str(c): rows[c].tolist() for c in rows.columns}
    if isinstance(rows, dict):
        sequences = [isinstance(v, (list, tuple, np.ndarray)) for v in rows.values()]
        if any(sequences):  # columns, as pandas.DataFrame(rows) reads them
            lengths = {len(v) for v in rows.values() if not isinstance(v, (str, bytes))}
            if not all(sequences) or len(lengths) != 1:
                raise InvalidArgument(
                    "a dict is one row (column → value) or columns (column → list of values, "
                    "all of one length), not both",
                    field="rows",
                )
            return {str(k): list(v) for k, v in rows.items()}
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


__all__ = [
    "POOLINGS",
    "EmbedChunk",
    "EmbedResult",
    "EmbedderClient",
    "EncoderSpec",
    "ludwig_columns",
    "rows_request",
]
