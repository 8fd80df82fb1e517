"""The gRPC face of the embedder: protobuf <-> domain objects, nothing else (no torch here).

Validation errors are raised as `tunewire.errors.*` with the field path; the shared interceptor
maps them to status codes, so nothing is caught here.

StreamEmbed runs on the server's event loop (grpc.aio), so an open stream holds no thread while
it waits for its client: a hundred idle streams cost memory, not the server's threads. A
request whose answer is in memory (a replay, or texts all kept by text) is answered on the loop
itself, where a worker thread's hop cost about what such an answer does; any other is begun
(validated, looked up in the cache, its texts claimed) in a worker thread. Either way, in
request order; up to `stream_window` requests of the stream are at work at once, those the model
must compute in a pool of the stream's own (so one client's tokenisation overlaps the model and
its rows fill shared batches). Answers go strictly in order, each split into chunks of at most
`chunk_bytes`. Backpressure end to end: gRPC flow control holds our `yield` when the client reads
slowly, the window then stops the reading, and the client's sends block in turn. A client that
goes away (cancel, deadline, dropped connection) ends the call; its texts still queued for the
model are dropped uncomputed. A client that sends nothing while owed nothing is closed by the
server's idle timeout (`tunewire.calls.IdleRequests`).

Responses are serialised here, by `encode_response`, into the bytes gRPC sends: the vectors are
copied once, straight into the message, instead of into a Tensor, a response and a serialised
copy of each (a warm stream is bound by those copies). A whole answer from the cache is encoded
inside its read transaction (the service's `render`), so that one copy is from the memory map.
The service is registered with `add_to_server`, whose serializer passes such bytes through.

Requests are received by `_receive`, which keeps, beside the parsed message, the message's size
and its texts in wire form: a replayed request is then found whole by those bytes, and its texts
are never turned into Python strings (that per-text work was most of a warm stream's cost for
small vectors, thousands of texts a request). For the same reason the SDK sends texts joined by
NUL in one field (`EmbedRequest.joined`, read through `JoinedTextsView`) rather than a record
each.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import grpc
import numpy as np
import structlog

from services.embedder.heads import HeadCache
from services.embedder.hot_vectors import BUSY
from services.embedder.predicting import predict_rows
from services.embedder.service import (
    Answered,
    EmbedderService,
    EmbedJob,
    EmbedResult,
    EncoderSpec,
    takes_rows,
)
from tunewire import tensors
from tunewire.auth import bearer_token
from tunewire.calls import IdleRequests
from tunewire.errors import InvalidArgument
from tunewire.filled_bytes import filled_bytes
from tunewire.paths import check_path_text
from tunewire.server import STREAM_CHUNK_BYTES
from tunewire.tensors import DTYPE_NAMES
from tunewire.v1 import embedder_pb2, embedder_pb2_grpc, tensor_pb2
from tunewire.wire import decode_varint, encode_varint

log = structlog.get_logger(__name__)

DEFAULT_MAX_TEXTS = 4096
DEFAULT_STREAM_WINDOW = 4
# A hard cap per text: past it tokenising alone costs more than the call is worth.
DEFAULT_MAX_TEXT_BYTES = 1 << 20
# The instruction is put before every text of a request (and is part of the fingerprint): an
# instruction of a few sentences is what instruction-tuned encoders take.
DEFAULT_MAX_INSTRUCTION_BYTES = 8 << 10

_POOLING = {
    embedder_pb2.POOLING_UNSPECIFIED: "mean",
    embedder_pb2.POOLING_MEAN: "mean",
    embedder_pb2.POOLING_CLS: "cls",
    embedder_pb2.POOLING_LAST: "last",
    embedder_pb2.POOLING_MAX: "max",
    embedder_pb2.POOLING_SUM: "sum",
}
_DTYPE = {
    tensor_pb2.DTYPE_UNSPECIFIED: "float32",
    tensor_pb2.DTYPE_FLOAT32: "float32",
    tensor_pb2.DTYPE_FLOAT16: "float16",
}


def spec_from_proto(
    msg: embedder_pb2.EncoderSpec, max_instruction_bytes: int = DEFAULT_MAX_INSTRUCTION_BYTES
) -> EncoderSpec:
    """Validate and convert an EncoderSpec; errors name the field as `encoder.<name>`."""
    if not msg.model.strip():
        raise InvalidArgument(
            "model is required: a local directory or a Hub id", field="encoder.model"
        )
    check_path_text(msg.model, "encoder.model")
    if msg.max_length < 0:
        raise InvalidArgument(
            f"max_length must be >= 0 (0 = the model's limit), got {msg.max_length}",
            field="encoder.max_length",
        )
    if (
        len(msg.instruction) > max_instruction_bytes // 4
        and (size := len(msg.instruction.encode())) > max_instruction_bytes
    ):
        raise InvalidArgument(
            f"the instruction is {size} bytes; the limit is {max_instruction_bytes}",
            field="encoder.instruction",
        )
    if msg.pooling not in _POOLING:
        raise InvalidArgument(f"unknown pooling value {msg.pooling}", field="encoder.pooling")
    if msg.dtype not in _DTYPE:
        name = (
            tensor_pb2.DType.Name(msg.dtype)
            if msg.dtype in tensor_pb2.DType.values()
            else str(msg.dtype)
        )
        raise InvalidArgument(
            f"unsupported dtype {name}: use DTYPE_FLOAT32 or DTYPE_FLOAT16", field="encoder.dtype"
        )
    return EncoderSpec(
        model=msg.model.strip(),
        revision=msg.revision,
        pooling=_POOLING[msg.pooling],
        max_length=msg.max_length,
        normalize=msg.normalize,
        dtype=_DTYPE[msg.dtype],
        layer=msg.layer,
        instruction=msg.instruction,
    )


# Wire tags: EmbedResponse.embeddings (field 1) and Tensor.data (field 3), length-delimited.
_EMBEDDINGS_TAG, _DATA_TAG = b"\x0a", b"\x1a"
# EmbedRequest.encoder (field 1), length-delimited.
_ENCODER_TAG = b"\x0a"


class JoinedTextsView(Sequence[str]):
    """EmbedRequest.joined as a sequence of str, decoded, split and checked against its count
    only when read: a replay found whole by its bytes (see `_receive`) never pays for that.
    Whole answers are stored only for requests whose texts were read, so a replay's bytes were
    checked when first seen; its length is the count it declares."""

    def __init__(self, joined: embedder_pb2.JoinedTexts) -> None:
        self._joined = joined
        self._texts: list[str] | None = None

    def _split(self) -> list[str]:
        if self._texts is None:
            utf8, count = self._joined.utf8, self._joined.count
            try:
                text = utf8.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidArgument(
                    f"joined.utf8 is not valid UTF-8 (byte {exc.start})", field="joined.utf8"
                ) from None
            texts = text.split("\0") if text or count else []
            if len(texts) != count:
                raise InvalidArgument(
                    f"joined.count is {count} but joined.utf8 holds "
                    f"{len(texts)} NUL-separated texts",
                    field="joined.count",
                )
            self._texts = texts
        return self._texts

    def __len__(self) -> int:
        return self._joined.count

    def __getitem__(self, index):
        return self._split()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._split())


class _Received(NamedTuple):
    """An EmbedRequest as parsed, with its size on the wire and its texts in wire form."""

    message: embedder_pb2.EmbedRequest
    size: int
    texts_wire: memoryview


def _receive(raw: bytes) -> _Received:
    """The request deserializer: parse `raw`, and keep as the texts' wire form the message after
    its leading `encoder` field (serialisers write fields in number order, so that is the
    texts' records, `fingerprint.encode_texts`). Whatever else that part might hold, it parses
    to the request's texts, so its hash still names them: a request laid out another way is
    only never answered whole, never answered wrongly (see `fingerprint.batch_key`)."""
    message = embedder_pb2.EmbedRequest.FromString(raw)  # validates the whole message first
    view = memoryview(raw)
    if raw[:1] == _ENCODER_TAG:
        size, start = decode_varint(view, 1)
        view = view[start + size :]
    return _Received(message, len(raw), view)


def encode_response(vectors: np.ndarray, rows: np.ndarray | None = None, **fields) -> bytes:
    """A serialised EmbedResponse holding `vectors` (float32/float16, [count, dim]), or with
    `rows` the vectors' rows `rows` in that order, and `fields`.

    Protobuf merges repeated occurrences of a message field, so the response is the small part
    (dtype, shape, counters) serialised as usual, followed by a second `embeddings` holding only
    `data`. The vectors are copied once, straight into the message (tunewire.filled_bytes):
    rows are gathered there, not into an array that is then copied again."""
    vectors = vectors.astype(vectors.dtype.newbyteorder("<"), copy=False)
    count = len(vectors) if rows is None else len(rows)
    row_bytes = vectors.shape[1] * vectors.itemsize
    tensor = tensor_pb2.Tensor(
        dtype=DTYPE_NAMES[vectors.dtype.name], shape=[count, vectors.shape[1]]
    )
    head = embedder_pb2.EmbedResponse(embeddings=tensor, **fields).SerializeToString()
    size = encode_varint(count * row_bytes)
    embeddings_size = encode_varint(1 + len(size) + count * row_bytes)
    prefix = b"".join([head, _EMBEDDINGS_TAG, embeddings_size, _DATA_TAG, size])

    def fill(out: np.ndarray) -> None:
        out[: len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
        data = out[len(prefix) :].reshape(count, row_bytes)
        if rows is None:
            data[...] = np.ascontiguousarray(vectors).view(np.uint8).reshape(count, row_bytes)
        else:  # rows are in range: "clip" never clips, and writes unbuffered ("raise" buffers)
            source = np.ascontiguousarray(vectors).view(np.uint8).reshape(-1, row_bytes)
            source.take(rows, axis=0, out=data, mode="clip")

    return filled_bytes(len(prefix) + count * row_bytes, fill)


@takes_rows
def _whole_response(result: EmbedResult) -> bytes:
    """Embed's answer: one response however large (the request's size is bounded instead)."""
    return encode_response(
        result.vectors,
        result.rows,
        cache_hits=result.hits,
        cache_misses=result.misses,
        fingerprint=result.fingerprint,
        offset=0,
        last=True,
    )


def _abandon(begun: asyncio.Future) -> None:
    """A request begun for a stream that has ended: release its claims without computing."""
    if begun.cancelled() or begun.exception() is not None:
        return
    job = begun.result()
    if not isinstance(job, Answered):
        threading.Thread(
            target=job.finish, args=(lambda: True,), name="stream-embed-abandon", daemon=True
        ).start()


def _serialize(message: bytes | embedder_pb2.EmbedResponse) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_to_server(servicer: EmbedderServicer, server: grpc.Server) -> None:
    """Register like the generated `add_EmbedderServiceServicer_to_server`, but with response
    serializers that pass already serialised responses (bytes) through."""

    def handler(kind, method, request, response):
        return kind(
            method,
            request_deserializer=_receive
            if request is embedder_pb2.EmbedRequest
            else request.FromString,
            response_serializer=_serialize
            if response is embedder_pb2.EmbedResponse
            else response.SerializeToString,
        )

    handlers = {
        "Embed": handler(
            grpc.unary_unary_rpc_method_handler,
            servicer.Embed,
            embedder_pb2.EmbedRequest,
            embedder_pb2.EmbedResponse,
        ),
        "StreamEmbed": handler(
            grpc.stream_stream_rpc_method_handler,
            servicer.StreamEmbed,
            embedder_pb2.EmbedRequest,
            embedder_pb2.EmbedResponse,
        ),
        "GetEncoderInfo": handler(
            grpc.unary_unary_rpc_method_handler,
            servicer.GetEncoderInfo,
            embedder_pb2.GetEncoderInfoRequest,
            embedder_pb2.GetEncoderInfoResponse,
        ),
        "GetCacheStats": handler(
            grpc.unary_unary_rpc_method_handler,
            servicer.GetCacheStats,
            embedder_pb2.GetCacheStatsRequest,
            embedder_pb2.GetCacheStatsResponse,
        ),
        "PredictRows": handler(
            grpc.unary_unary_rpc_method_handler,
            servicer.PredictRows,
            embedder_pb2.PredictRowsRequest,
            embedder_pb2.PredictRowsResponse,
        ),
    }
    name = "tunewire.v1.EmbedderService"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


class EmbedderServicer(embedder_pb2_grpc.EmbedderServiceServicer):
    def __init__(
        self,
        service: EmbedderService,
        max_texts: int = DEFAULT_MAX_TEXTS,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        chunk_bytes: int = STREAM_CHUNK_BYTES,
        heads: HeadCache | None = None,
        max_instruction_bytes: int = DEFAULT_MAX_INSTRUCTION_BYTES,
    ) -> None:
        """`heads` serves PredictRows (none: every artifact is refused as outside the roots)."""
        self.service = service
        self.heads = heads or HeadCache()
        self.max_texts = max_texts
        self.max_text_bytes = max_text_bytes
        self.max_instruction_bytes = max_instruction_bytes
        self.stream_window = stream_window
        self.chunk_bytes = chunk_bytes

    def _begin(
        self,
        received: _Received,
        render: Callable[[EmbedResult], object],
        memory_checked: bool = False,
    ) -> EmbedJob | Answered:
        """Validate the request and begin it (EmbedderService.begin); `memory_checked`: it was
        just looked for in memory (`_in_memory`)."""
        request = received.message
        spec = spec_from_proto(request.encoder, self.max_instruction_bytes)
        # Both read lazily: a replay answered whole never needs its texts as str.
        joined = request.HasField("joined")
        if joined and request.texts:
            raise InvalidArgument("set texts or joined, not both", field="joined")
        texts = JoinedTextsView(request.joined) if joined else request.texts
        field = "joined.count" if joined else "texts"
        if len(texts) > self.max_texts:
            raise InvalidArgument(
                f"{len(texts)} texts in one request; the limit is "
                f"{self.max_texts}: split the request",
                field=field,
            )
        if received.size > self.max_text_bytes:  # else no text can be over the limit
            sizes = (
                map(len, request.joined.utf8.split(b"\0"))
                if joined
                else (
                    len(text.encode()) if len(text) > self.max_text_bytes // 4 else 0
                    for text in texts
                )
            )
            for i, size in enumerate(sizes):
                if size > self.max_text_bytes:
                    raise InvalidArgument(
                        f"text {i} is {size} bytes; the limit is {self.max_text_bytes}",
                        field="joined.utf8" if joined else f"texts[{i}]",
                    )
        job = self.service.begin(
            spec,
            texts,
            render,
            received.texts_wire,
            request.joined.utf8 if joined else None,
            memory_checked,
        )
        if request.write_behind and isinstance(job, EmbedJob):
            job.write_behind = True
        return job

    def _in_memory(
        self, received: _Received, render: Callable[[EmbedResult], object]
    ) -> Answered | object | None:
        """The request's answer if memory holds it (EmbedderService.answer_in_memory), for the
        event loop: only a joined request of at most `max_text_bytes` is looked for, whose
        checks are as cheap as the lookup (the rest, and any refusal, are `_begin`'s, in a
        worker thread). None: not in memory; `BUSY`: not looked for (`_begin` looks)."""
        request = received.message
        if (
            received.size > self.max_text_bytes
            or not request.HasField("joined")
            or request.texts
            or request.joined.count > self.max_texts
        ):
            return BUSY
        try:
            spec = spec_from_proto(request.encoder, self.max_instruction_bytes)
        except InvalidArgument:
            return BUSY  # refused by `_begin`, with the same error
        return self.service.answer_in_memory(
            spec,
            JoinedTextsView(request.joined),
            render,
            received.texts_wire,
            request.joined.utf8,
        )

    @takes_rows
    def _chunks(self, result: EmbedResult) -> list[bytes]:
        """The result as serialised responses of at most `chunk_bytes` of vectors (>= 1 row)."""
        vectors, rows = result.vectors, result.rows
        count = len(vectors) if rows is None else len(rows)
        row_bytes = max(vectors.shape[1] * vectors.itemsize, 1)
        step = max(self.chunk_bytes // row_bytes, 1)
        return [
            encode_response(
                vectors[start : start + step] if rows is None else vectors,
                None if rows is None else rows[start : start + step],
                cache_hits=result.hits if start == 0 else 0,
                cache_misses=result.misses if start == 0 else 0,
                fingerprint=result.fingerprint,
                offset=start,
                last=start + step >= count,
            )
            for start in range(0, max(count, 1), step)
        ]

    def Embed(self, request, context: grpc.ServicerContext) -> bytes:
        return self._begin(request, _whole_response).finish(lambda: not context.is_active())

    async def StreamEmbed(self, request_iterator, context) -> AsyncIterator[bytes]:
        """Runs on the server's event loop: an open stream holds no thread while it waits for
        the client (the server's idle timeout closes one that stays silent while owed nothing).
        Requests are begun in request order (cache lookup and claims) in a worker thread, up to
        `stream_window` at once; those that need the model compute in a pool of the stream's
        own; answers go out in order."""
        loop = asyncio.get_running_loop()
        ended = threading.Event()  # the call is over: its texts still queued are dropped
        context.add_done_callback(lambda _ctx: ended.set())
        window = asyncio.Semaphore(self.stream_window)
        pending: asyncio.Queue[asyncio.Future | None] = asyncio.Queue()
        owed = 0  # requests read and not yet answered in full
        pools: list[ThreadPoolExecutor] = []
        if isinstance(request_iterator, IdleRequests):
            request_iterator.busy = lambda: owed > 0

        def compute(job: EmbedJob) -> asyncio.Future:
            if not pools:
                pools.append(
                    ThreadPoolExecutor(self.stream_window, thread_name_prefix="stream-embed")
                )
            return loop.run_in_executor(pools[0], job.finish, ended.is_set)

        async def read() -> None:
            nonlocal owed
            try:
                async for request in request_iterator:
                    await window.acquire()
                    owed += 1
                    answer = loop.create_future()
                    try:
                        answered = self._in_memory(request, self._chunks)
                    except Exception as exc:  # noqa: BLE001 - answered in order, below
                        answer.set_exception(exc)
                        pending.put_nowait(answer)
                        continue
                    if isinstance(
                        answered, Answered
                    ):  # no thread's hop: it cost what the lookup did
                        answer.set_result(answered.rendered)
                        pending.put_nowait(answer)
                        continue
                    checked = answered is None  # else BUSY: the thread looks in memory
                    begin = asyncio.ensure_future(
                        asyncio.to_thread(self._begin, request, self._chunks, checked)
                    )
                    try:
                        job = await asyncio.shield(begin)
                    except asyncio.CancelledError:
                        begin.add_done_callback(_abandon)
                        raise
                    except Exception as exc:  # noqa: BLE001 - answered in order, below
                        answer.set_exception(exc)
                    else:
                        if isinstance(job, Answered):
                            answer.set_result(job.rendered)
                        else:
                            answer = compute(job)
                    pending.put_nowait(answer)
            except Exception as exc:  # noqa: BLE001 - e.g. the idle timeout: ends the stream
                failed = loop.create_future()
                failed.set_exception(exc)
                pending.put_nowait(failed)
            finally:
                pending.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (answer := await pending.get()) is not None:
                try:
                    chunks = await answer
                finally:
                    window.release()
                for chunk in chunks:
                    yield chunk
                owed -= 1
        finally:
            reader.cancel()
            # Jobs already begun still run: each releases its claims (at once once the call
            # has ended), so no other request waits on texts nobody computes.
            for pool in pools:
                pool.shutdown(wait=False)

    def GetEncoderInfo(
        self, request, context: grpc.ServicerContext
    ) -> embedder_pb2.GetEncoderInfoResponse:
        info = self.service.info(spec_from_proto(request.encoder, self.max_instruction_bytes))
        return embedder_pb2.GetEncoderInfoResponse(
            fingerprint=info.fingerprint,
            dimension=info.dimension,
            model_type=info.model_type,
            max_length=info.max_length,
            device=info.device,
            compute_dtype=info.compute_dtype,
        )

    def GetCacheStats(
        self, request, context: grpc.ServicerContext
    ) -> embedder_pb2.GetCacheStatsResponse:
        stats = self.service.cache_stats()
        work = self.service.counters()
        return embedder_pb2.GetCacheStatsResponse(
            entries=stats.entries,
            bytes=stats.bytes,
            hits=stats.hits,
            misses=stats.misses,
            map_size=stats.map_size,
            forward_passes=work.forward_passes,
            computed_texts=work.computed_texts,
            shared_batches=work.shared_batches,
            dropped_texts=work.dropped_texts,
            computed_tokens=work.computed_tokens,
        )

    def PredictRows(
        self, request, context: grpc.ServicerContext
    ) -> embedder_pb2.PredictRowsResponse:
        columns = self._row_columns(request.columns)
        head = self.heads.get(request.model, bearer_token(context.invocation_metadata()))
        result = predict_rows(self.service, head, columns, lambda: not context.is_active())
        out = embedder_pb2.PredictRowsResponse(
            rows=result.rows, cache_hits=result.cache_hits, cache_misses=result.cache_misses
        )
        for f in result.outputs:
            fp = out.features.add(
                feature=f.feature, predictions=f.predictions, class_names=f.class_names
            )
            if f.probabilities is not None:
                fp.probabilities.CopyFrom(tensors.to_proto(f.probabilities))
        return out

    def _row_columns(self, columns) -> dict[str, list]:
        """RowColumn messages → column name → values (None where missing), within the limits
        on texts per request and bytes per text."""
        out: dict[str, list] = {}
        for i, column in enumerate(columns):
            if not column.name:
                raise InvalidArgument("is required", field=f"columns[{i}].name")
            if column.name in out:
                raise InvalidArgument(f"column {column.name!r} twice", field=f"columns[{i}].name")
            if len(column.values) > self.max_texts:
                raise InvalidArgument(
                    f"{len(column.values)} rows in one request; the limit is {self.max_texts}",
                    field=f"columns[{i}].values",
                )
            values: list = list(column.values)
            for j, value in enumerate(values):
                if len(value) > self.max_text_bytes // 4 and len(value.encode()) > (
                    self.max_text_bytes
                ):
                    raise InvalidArgument(
                        f"value is over {self.max_text_bytes} bytes",
                        field=f"columns[{i}].values[{j}]",
                    )
            for row in column.missing:
                if row >= len(values):
                    raise InvalidArgument(
                        f"row {row} is past the column's {len(values)} values",
                        field=f"columns[{i}].missing",
                    )
                values[row] = None
            out[column.name] = values
        return out
