"""What the HTTP routes call: the services, through the SDK, on the caller's behalf.

Every call carries the HTTP caller's own bearer token (from its `Authorization` header) to the
gRPC services, which authenticate and authorise it exactly as they do a gRPC caller: the front
door holds no token of its own and decides nothing about who may do what. TLS to the services
is the usual client setting (TUNEWIRE_TLS_CA/_CERT/_KEY).

Encoders are served by the names given at start (`--model NAME=PATH`); how each pools,
normalises and truncates comes from its sentence-transformers files when the path is local
(tunewire.model_names.pooling_defaults), and its tokenizer, when local, counts tokens for
`usage` and for refusing over-long inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.concurrency import run_in_threadpool

from clients.http.coalesce import Coalescer
from clients.http.inputs import renamed_cells
from clients.sdk import EmbedderClient, EncoderSpec, TrainerClient, connect
from tunewire.errors import InvalidArgument, NotFound, TunewireError, Unauthenticated
from tunewire.model_names import pooling_defaults
from tunewire.tls import ClientSecurity

# Longer bearer tokens are refused here, before gRPC's metadata limit (16 KiB) refuses them.
MAX_TOKEN_CHARS = 4096

_caller_token: ContextVar[str | None] = ContextVar("tunewire_http_caller_token", default=None)


class _ForwardToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the current HTTP caller's token (if it sent one) to each gRPC call."""

    def _details(self, details):
        token = _caller_token.get()
        if not token:
            return details
        if len(token) > MAX_TOKEN_CHARS or not (token.isascii() and token.isprintable()):
            # gRPC refuses such metadata itself ("Invalid metadata": HTTP 500), or past its
            # size limit (RESOURCE_EXHAUSTED: 429): no token the services know looks so.
            raise Unauthenticated(
                "the token is not known to this server (a bearer token is at most "
                f"{MAX_TOKEN_CHARS} printable ASCII characters)",
                reason="TOKEN_UNKNOWN",
            )
        metadata = [(k, v) for k, v in (details.metadata or ()) if k != "authorization"]
        metadata.append(("authorization", f"Bearer {token}"))
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(_Details.of(details)), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(_Details.of(details)), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(_Details.of(details)), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(_Details.of(details)), request_iterator)


class _Details(grpc.ClientCallDetails):
    __slots__ = ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")

    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = (
            credentials,
            wait_for_ready,
            compression,
        )

    @classmethod
    def of(cls, d) -> _Details:
        return cls(
            d.method,
            d.timeout,
            d.metadata,
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def _replace(self, **kw) -> _Details:
        out = _Details.of(self)
        for k, v in kw.items():
            setattr(out, k, v)
        return out


def forwarding_channel(address: str) -> grpc.Channel:
    """A channel to a service with the usual TLS settings and no token of its own: each call
    carries the HTTP caller's."""
    security = replace(ClientSecurity.from_env(), token=None, token_file=None)
    return grpc.intercept_channel(connect(address, security), _ForwardToken())


@dataclass
class EncoderModel:
    """A named encoder as the HTTP routes serve it."""

    name: str
    path: str
    spec: EncoderSpec
    normalize: bool = False  # what its sentence-transformers files say
    tokenizer: object | None = None  # tokenizers.Tokenizer, when the path is local
    dimension: int = 0
    max_length: int = 0
    compute_dtype: str = ""  # what the embedder's forward passes run in (TEI's model_dtype)
    loaded: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def token_counts(self, texts: list[str]) -> list[int] | None:
        """Tokens per text (special tokens included, nothing truncated), or None without a
        local tokenizer."""
        if self.tokenizer is None:
            return None
        # The fast batch skips the offsets, which a count does not need (~20 % of its time).
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        return [len(e) for e in encode(texts)]


# Most rows (predict) and texts (embeddings) one merged call carries; see coalesce.py.
MAX_MERGED_ROWS = 256
MAX_MERGED_TEXTS = 256
# Worker threads (starlette's pool: 40) one caller's calls may hold at once.
MAX_THREADS_PER_CALLER = 8
# Merged calls per key (caller, model, settings) in flight at once (coalesce.py): while they
# run, that key's new requests queue and go together in the next. Two let one call's answer
# travel back while the other computes; the environment variable sets another count for a
# bench to compare (each worker process of `serve http --workers N` reads it).
CALLS_IN_FLIGHT_ENV = "TUNEWIRE_HTTP_CALLS_IN_FLIGHT"
DEFAULT_CALLS_IN_FLIGHT = 2


def calls_in_flight() -> int:
    """The merged calls per key in flight at once: `CALLS_IN_FLIGHT_ENV`, else the default;
    InvalidArgument naming the variable when it is not a positive integer."""
    raw = os.environ.get(CALLS_IN_FLIGHT_ENV, "").strip()
    if not raw:
        return DEFAULT_CALLS_IN_FLIGHT
    if not raw.isdigit() or int(raw) < 1:
        raise InvalidArgument(
            f"{CALLS_IN_FLIGHT_ENV} must be a positive integer, not {raw!r}",
            field=CALLS_IN_FLIGHT_ENV,
        )
    return int(raw)


def _input_error(exc: InvalidArgument) -> InvalidArgument:
    """The embedder's error about its Embed request's texts (`joined.count`, `joined.utf8`:
    "text 3 is N bytes", `texts[3]`), named by the HTTP request's `input`, `input[3]`."""
    if exc.field in ("joined.count", "texts"):
        return InvalidArgument(exc.message, field="input", reason="TOO_MANY_INPUTS")
    item = re.fullmatch(r"texts\[(\d+)\]", exc.field or "") or (
        exc.field == "joined.utf8" and re.match(r"text (\d+) ", exc.message)
    )
    if item:
        return InvalidArgument(exc.message, field=f"input[{item[1]}]", reason="INPUT_TOO_LONG")
    return exc


def _tokenizer(path: str):
    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(file))
    tok.no_truncation()
    tok.no_padding()
    return tok


class Backend:
    """The services behind the HTTP front door."""

    def __init__(
        self,
        embedder: str,
        trainer: str | None = None,
        models: dict[str, str] | None = None,
        served_model: str | None = None,
        local_predict: Callable[[str, dict[str, list]], dict[str, list]] | None = None,
    ) -> None:
        """`models`: NAME → PATH of the encoders served; the first is TEI's default model.
        `served_model`: the artifact `serve http --model_path` serves at /predict.
        `local_predict`: predictions answered in this process (local.py) instead of through
        the embedder's gRPC port, where the embedder runs here without tokens."""
        self.embedder_address = embedder
        self._local_predict = local_predict
        self._embedder_channel = forwarding_channel(embedder)
        self.embedder = EmbedderClient(embedder, channel=self._embedder_channel)
        self.trainer = (
            TrainerClient(trainer, channel=forwarding_channel(trainer)) if trainer else None
        )
        self.served_model = served_model
        self.models: dict[str, EncoderModel] = {}
        for name, path in (models or {}).items():
            st = pooling_defaults(path)
            # The embedder knows NAME too (serve all, serve http in-process; --model there).
            spec = EncoderSpec(model=path, pooling=st.pooling, max_length=st.max_seq_length)
            self.models[name] = EncoderModel(name, path, spec, st.normalize, _tokenizer(path))
        self.default_model = next(iter(self.models), None)
        # Concurrent single-row predictions and embeddings requests, merged (coalesce.py).
        # Each caller's share of the worker threads (caller_slot), so one caller's many
        # requests never hold every thread while another's wait.
        self._slots: dict[str | None, list] = {}
        gate, in_flight = self.caller_slot_of_key, calls_in_flight()
        self._rows = Coalescer(
            self._predict_merged, lambda row: 1, MAX_MERGED_ROWS, in_flight, gate=gate
        )
        self._texts = Coalescer(self._embed_merged, len, MAX_MERGED_TEXTS, in_flight, gate=gate)

    @contextlib.asynccontextmanager
    async def caller_slot(self, token: str | None):
        """One of the MAX_THREADS_PER_CALLER worker threads the caller holding `token` may
        use at once (waited for on the event loop, holding no thread)."""
        entry = self._slots.get(token)
        if entry is None:
            entry = self._slots[token] = [asyncio.Semaphore(MAX_THREADS_PER_CALLER), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._slots[token]

    def caller_slot_of_key(self, key: tuple):
        return self.caller_slot(key[0])  # the coalescers' keys begin with the token

    async def in_thread(self, token: str | None, fn: Callable, *args):
        """`fn(*args)` in a worker thread on behalf of the caller holding `token`, within that
        caller's share of the threads."""

        def work():
            self.as_caller(token)
            return fn(*args)

        async with self.caller_slot(token):
            return await run_in_threadpool(work)

    @staticmethod
    def as_caller(token: str | None):
        """Context for a call made on behalf of the HTTP caller holding `token`."""
        return _caller_token.set(token)

    def model(self, name: str | None) -> EncoderModel:
        if name is None:
            if self.default_model is None:
                raise NotFound(
                    "no embedding model is served: start with --model NAME=PATH", field="model"
                )
            name = self.default_model
        model = self.models.get(name)
        if model is None:
            served = ", ".join(self.models) or "none"
            raise NotFound(f"the model {name!r} does not exist (served: {served})", field="model")
        if not model.loaded:
            with model.lock:
                if not model.loaded:
                    info = self.embedder.info(model.spec)
                    model.dimension, model.max_length = int(info.dimension), int(info.max_length)
                    model.compute_dtype = info.compute_dtype
                    model.loaded = True
        return model

    async def resolve_model(self, name: str | None, token: str | None) -> EncoderModel:
        """`model(name)` on the event loop when it is known already, else in a worker thread
        (the first use asks the embedder for its dimension and limit)."""
        known = self.models.get(self.default_model if name is None else name)
        if known is not None and known.loaded:
            return known

        return await self.in_thread(token, self.model, name)

    async def embed_request(
        self,
        token: str | None,
        model: EncoderModel,
        texts: list[str],
        normalize: bool,
        truncate: bool,
    ) -> tuple[np.ndarray, int]:
        """`embed` on behalf of the caller holding `token`, in one Embed call with whatever
        concurrent requests of the same caller, model and settings are waiting (coalesce.py)."""
        return await self._texts.submit((token, model.name, normalize, truncate), texts)

    def _embed_merged(
        self, key: tuple, requests: list[list[str]]
    ) -> list[tuple[np.ndarray, int] | Exception]:
        """One Embed call for every request's texts, sent before their tokens are counted:
        counting them (~0.3 ms a text of ~140 tokens on one core) held up each merged call
        for as long before it left, while the loop's other clients waited. A request the count
        refuses (an input over the model's limit, not truncating) gets its error; its texts,
        computed truncated meanwhile, are dropped."""
        token, name, normalize, truncate = key
        self.as_caller(token)
        model = self.models[name]
        spec = replace(model.spec, normalize=normalize)
        # write_behind: the answer goes to the HTTP caller, nobody reads the cache's file
        # for it, so the call does not wait for the cache's fsync.
        call = self.embedder.embed_started(
            [t for texts in requests for t in texts], spec, write_behind=True
        )
        try:
            answers = self._prompt_tokens_each(model, requests, truncate)
        except BaseException:
            call.cancel()
            raise
        try:
            result = call.result()
        except InvalidArgument as exc:
            if len(requests) > 1:
                raise  # coalesce.py sends each request alone: each gets its own answer
            # Alone, the Embed request's texts are this request's inputs: named so (the
            # front door's own refusal first, as when it was checked before the call).
            raise (answers[0] if isinstance(answers[0], Exception) else _input_error(exc)) from None
        vectors = np.asarray(result.vectors, dtype=np.float32)
        start = 0
        for i, (texts, answer) in enumerate(zip(requests, answers, strict=True)):
            if isinstance(answer, int):
                answers[i] = (vectors[start : start + len(texts)], answer)
            start += len(texts)
        return answers

    async def predict_row(self, token: str | None, model: str, row: Mapping) -> dict:
        """One row's Ludwig-named outputs on behalf of the caller holding `token`, in one
        PredictRows call with whatever concurrent single rows for the same caller, model and
        columns are waiting (coalesce.py)."""
        return await self._rows.submit((token, model, tuple(sorted(row))), row)

    def _predict_merged(self, key: tuple, rows: list[Mapping]) -> list[dict]:
        token, model, names = key
        self.as_caller(token)
        try:
            out = self.predict(model, {name: [row[name] for row in rows] for name in names})
        except TunewireError as exc:
            # Alone (coalesce.py's retry), column i is this request's field names[i].
            raise (renamed_cells(exc, lambda i, j: names[i]) if len(rows) == 1 else exc) from None
        return [{name: values[i] for name, values in out.items()} for i in range(len(rows))]

    @staticmethod
    def _prompt_tokens_each(
        model: EncoderModel, requests: list[list[str]], truncate: bool
    ) -> list[int | InvalidArgument]:
        """Per request, its prompt's tokens as `usage` counts them (0 without a local
        tokenizer), or InvalidArgument for an input over the model's limit when not
        truncating; the texts of all of them counted in one batch."""
        counts = model.token_counts([t for texts in requests for t in texts])
        if counts is None:
            return [0] * len(requests)
        limit, start, out = model.max_length, 0, []
        for texts in requests:
            mine, start = counts[start : start + len(texts)], start + len(texts)
            too_long = next(
                (i for i, c in enumerate(mine) if limit and c > limit and not truncate), None
            )
            if too_long is None:
                out.append(sum(min(c, limit) if limit else c for c in mine))
                continue
            count = mine[too_long]
            out.append(
                InvalidArgument(
                    f"input {too_long} has {count} tokens; the model {model.name!r} takes at "
                    f"most {limit}",
                    field=f"input[{too_long}]",
                    reason="INPUT_TOO_LONG",
                    metadata={"tokens": str(count), "max": str(limit)},
                )
            )
        return out

    def predict(self, model: str, columns: dict[str, list]) -> dict[str, list]:
        if self._local_predict is not None:
            return self._local_predict(model, columns)
        return self.embedder.predict_columns(model, columns)

    def healthy(self) -> bool:
        """The embedder answers SERVING. (The trainer is needed only to fetch a job's model by
        id; a front door whose trainer is away still embeds and serves local artifacts.)"""
        try:
            status = (
                health_pb2_grpc.HealthStub(self._embedder_channel)
                .Check(health_pb2.HealthCheckRequest(), timeout=2)
                .status
            )
        except grpc.RpcError:
            return False
        return status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self.embedder.close()
        if self.trainer is not None:
            self.trainer.close()
