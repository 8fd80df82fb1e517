"""Bearer-token authentication, principals and role checks for every tunewire server.

Tokens live in a file (a mounted Kubernetes Secret in a cluster), one line per token, `#` comments
allowed; the file is re-read when it changes, so a rotated Secret takes effect without a restart.
Clients send `authorization: Bearer TOKEN` in the call metadata.

A line is `TOKEN ROLE NAME [HUB_NAMESPACES]`. NAME is the *principal*: the owner of the data
sets, jobs, artifacts and uploads its calls create. Several tokens may name one principal (a
rotation; a read-only token beside a train one), with one set of namespaces. HUB_NAMESPACES is a
comma-separated list of Hub owners the principal may upload to (`*`: any); it defaults to NAME.
An old `TOKEN ROLE` line still loads: its principal is named `token-<8 hex digits of the token's
sha256>`, and a warning says so.

Each RPC needs one role (`METHOD_ROLES`, the one table); a role grants itself and the roles listed
in `GRANTS`. Health checks need no token so that Kubernetes probes work; an RPC missing from the
table needs `admin` (fail closed). A missing or unknown token is UNAUTHENTICATED, a known token
whose role does not grant the RPC's role is PERMISSION_DENIED.

A `service` token (the trainer, the hub gateway) calls its peers *on behalf of* a principal: it
names that principal in the metadata `x-tunewire-on-behalf-of`, and the call then runs as that
principal, allowed only what both the service and that principal's role grant. Any other token
naming a principal other than its own is PERMISSION_DENIED; a service naming a principal the
tokens file does not know is UNAUTHENTICATED. Without a tokens file a server has no principals
(one user; `LOCAL`), and the header means nothing.

Servicers read the caller with `current_principal()`: the interceptor binds it in a contextvar
around each step of the handler, so it holds in sync handlers (a pool thread) and async ones (a
task) alike. Outgoing calls made while serving a principal, or inside `acting_for(name)` (a job
run by the trainer for its owner), carry the header (`tunewire.tls` adds it next to the token).

Tokens are held only as sha256 digests and never logged; logs name a token by the first 8 hex
digits of its digest (`token_id`), which identifies it to an operator without revealing it.
Errors about the tokens file name the line and column, never a value that might be a token.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from tunewire.errors import PermissionDenied, TunewireError, Unauthenticated
from tunewire.watch import WatchedFile

log = structlog.get_logger("tunewire.auth")

ADMIN, TRAIN, EMBED, READ, SERVICE = "admin", "train", "embed", "read", "service"
ROLES = (ADMIN, TRAIN, EMBED, READ, SERVICE)
# What each role may do: a train token also embeds (its jobs need vectors) and reads. A service
# token does what the trainer and gateway need of their peers, never admin's RPCs.
GRANTS: dict[str, frozenset[str]] = {
    ADMIN: frozenset(ROLES),
    TRAIN: frozenset({TRAIN, EMBED, READ}),
    EMBED: frozenset({EMBED}),
    READ: frozenset({READ}),
    SERVICE: frozenset({TRAIN, EMBED, READ}),
}
# The metadata a service token uses to name the principal it acts for.
ON_BEHALF_OF = "x-tunewire-on-behalf-of"
ANY_NAMESPACE = "*"

_EMB, _TRN, _HUB = (
    "/tunewire.v1.EmbedderService/",
    "/tunewire.v1.TrainerService/",
    "/tunewire.v1.HubGatewayService/",
)
METHOD_ROLES: dict[str, str] = {
    _EMB + "Embed": EMBED,
    _EMB + "StreamEmbed": EMBED,
    _EMB + "GetEncoderInfo": EMBED,  # loads the model: as costly as embedding
    _EMB + "GetCacheStats": READ,
    # A job's head is fetched from the trainer with the caller's token: the trainer then checks
    # that this caller may read that job (DownloadArtifact, READ).
    _EMB + "PredictRows": EMBED,
    _TRN + "UploadDataset": TRAIN,
    _TRN + "GetDataset": READ,
    _TRN + "DeleteDataset": TRAIN,
    _TRN + "CreateJob": TRAIN,
    _TRN + "GetJob": READ,
    _TRN + "ListJobs": READ,
    _TRN + "CancelJob": TRAIN,
    _TRN + "WatchJob": READ,
    _TRN + "Predict": TRAIN,
    _TRN + "DownloadArtifact": READ,  # the hub_gateway fetches job artifacts with a read token
    _HUB + "CreateUpload": TRAIN,
    _HUB + "GetUpload": READ,
    _HUB + "WatchUpload": READ,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": READ,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": READ,
}
# Reachable without a token: probes must not need a Secret.
PUBLIC_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def token_id(token: str) -> str:
    """A loggable name for a token: 8 hex digits of its sha256."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def required_role(method: str) -> str:
    return METHOD_ROLES.get(method, ADMIN)


@dataclass(frozen=True)
class Principal:
    """Who a call runs as. `name` owns what the call creates; `namespaces` are the Hub owners it
    may upload to (`*`: any); `token_id` names the token presented; `via` the token_id of the
    service that acts for it, if one does."""

    name: str
    role: str
    token_id: str = ""
    namespaces: tuple[str, ...] = ()
    via: str = ""

    @property
    def sees_all(self) -> bool:
        """admin, and the one user of a server without tokens, see every principal's work."""
        return self.role == ADMIN or self is LOCAL

    def owns(self, owner: str) -> bool:
        """May this principal see a resource owned by `owner`?"""
        return self.sees_all or owner == self.name

    def may_upload_to(self, namespace: str) -> bool:
        """May this principal upload to the Hub owner `namespace`? (The Hub's owner names are
        case-insensitive.)"""
        allowed = {n.lower() for n in self.namespaces}
        return self is LOCAL or ANY_NAMESPACE in allowed or namespace.lower() in allowed

    def require_namespace(self, repo_id: str, field: str) -> None:
        """PERMISSION_DENIED on `field` unless this principal may upload to `repo_id`'s owner
        (the gateway checks an upload's spec; the trainer a job's upload_to, before it runs)."""
        namespace = repo_id.split("/", 1)[0]
        if not self.may_upload_to(namespace):
            allowed = ", ".join(self.namespaces) or "none"
            raise PermissionDenied(
                f"principal {self.name!r} may not upload to the Hub namespace "
                f"{namespace!r} (its namespaces: {allowed})",
                field=field,
                reason="NAMESPACE_NOT_ALLOWED",
            )


# The caller of a server that has no tokens file: one user, who sees and may do everything. Its
# name, "", is the owner of what such a server stores (admin sees it if tokens come later).
LOCAL = Principal(name="", role=ADMIN, namespaces=(ANY_NAMESPACE,))

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def legacy_name(token: str) -> str:
    """The principal of a `TOKEN ROLE` line, which names none."""
    return f"token-{token_id(token)}"


@dataclass(frozen=True)
class Tokens:
    """A parsed tokens file: by token digest, and by principal name (for service assertions)."""

    by_digest: dict[bytes, Principal]
    by_name: dict[str, tuple[Principal, ...]]  # one per role the principal's tokens have


def parse_tokens(text: str, source: str) -> Tokens:
    """`TOKEN ROLE NAME [HUB_NAMESPACES]` lines (or old `TOKEN ROLE` ones). Errors name the line
    and the column, never a value: a line written the wrong way round would put its token in the
    error, and so in the log."""
    by_digest: dict[bytes, Principal] = {}
    by_name: dict[str, tuple[Principal, ...]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        parts = line.split()
        if not 2 <= len(parts) <= 4:
            raise ValueError(
                f"{where}: expected 'TOKEN ROLE NAME [HUB_NAMESPACES]' ({len(parts)} fields)"
            )
        token, role = parts[0], parts[1]
        if role not in GRANTS:
            hint = (
                " (the line starts with a role: write the token first)" if token in GRANTS else ""
            )
            raise ValueError(
                f"{where}: the second field is not a role (roles: {', '.join(ROLES)}){hint}"
            )
        if len(parts) == 2:
            name = legacy_name(token)
            log.warning(
                "auth token line names no principal; named by a hash of its token",
                source=source,
                line=number,
                principal=name,
                format="TOKEN ROLE NAME [HUB_NAMESPACES]",
            )
        else:
            name = parts[2]
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"{where}: the third field (NAME) must be letters, digits and . _ @ - "
                    "(at most 128, starting with a letter or digit)"
                )
        namespaces = tuple(parts[3].split(",")) if len(parts) == 4 else (name,)
        for ns in namespaces:
            if ns != ANY_NAMESPACE and not _NAMESPACE.fullmatch(ns):
                raise ValueError(
                    f"{where}: the fourth field (HUB_NAMESPACES) must be Hub owner names "
                    "separated by commas, or *"
                )
        principal = Principal(name, role, token_id(token), namespaces)
        known = by_name.get(name, ())
        if known and known[0].namespaces != namespaces:
            raise ValueError(f"{where}: principal {name!r} appears earlier with other namespaces")
        digest = hashlib.sha256(token.encode()).digest()
        if digest in by_digest and by_digest[digest].name != name:
            raise ValueError(f"{where}: the same token appears for two principals")
        if digest in by_digest and by_digest[digest].role != role:
            raise ValueError(f"{where}: the same token appears with two roles")
        by_digest[digest] = principal
        if role not in {p.role for p in known}:
            by_name[name] = (*known, principal)
    if not by_digest:
        raise ValueError(f"{source}: no tokens")
    return Tokens(by_digest, by_name)


class TokenFile:
    """The tokens of a file, reloaded when it changes. A reload that fails to parse keeps the
    previous tokens (a half-written file must not lock everybody out) and logs the error."""

    def __init__(self, path: Path, min_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self._file = WatchedFile(self.path, min_interval_s)
        self._lock = threading.Lock()
        data, _ = self._file.read()
        self._tokens = parse_tokens(data.decode("utf-8", "replace"), str(self.path))
        self._data = data

    def _current(self) -> Tokens:
        data, _ = self._file.read()
        with self._lock:
            if data != self._data:
                try:
                    self._tokens = parse_tokens(data.decode("utf-8", "replace"), str(self.path))
                    log.info(
                        "auth tokens reloaded",
                        path=str(self.path),
                        tokens=len(self._tokens.by_digest),
                    )
                except ValueError as exc:
                    log.error(
                        "auth token file rejected; keeping the previous tokens", error=str(exc)
                    )
                self._data = data
            return self._tokens

    def lookup(self, token: str) -> Principal | None:
        return self._current().by_digest.get(hashlib.sha256(token.encode()).digest())

    def principal(self, name: str, needs: str = READ) -> Principal | None:
        """The principal called `name` with the least powerful of its roles that grants `needs`;
        None when no token names it; a principal without such a role when none grants it."""
        known = self._current().by_name.get(name, ())
        able = sorted(
            (p for p in known if needs in GRANTS[p.role]), key=lambda p: len(GRANTS[p.role])
        )
        return able[0] if able else (known[0] if known else None)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer TOKEN` header, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def asserted_principal(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The principal named in `x-tunewire-on-behalf-of`, or None."""
    for key, value in metadata or ():
        if key == ON_BEHALF_OF:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            return text.strip()
    return None


# -- the calling principal ----------------------------------------------------------------------

_CALLER: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "tunewire_caller", default=None
)
_ACTING_FOR: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tunewire_acting_for", default=None
)


def current_principal() -> Principal:
    """The principal the current call runs as; `LOCAL` on a server without tokens (or outside a
    call)."""
    return _CALLER.get() or LOCAL


def acting_for_name() -> str:
    """The principal outgoing calls from here act for ("" for none): the one set by
    `acting_for`, else the caller being served."""
    name = _ACTING_FOR.get()
    if name is not None:
        return name
    caller = _CALLER.get()
    return caller.name if caller is not None else ""


@contextlib.contextmanager
def acting_for(name: str) -> Iterator[None]:
    """Outgoing calls in this block act for `name` ("" for nobody: the service as itself)."""
    reset = _ACTING_FOR.set(name)
    try:
        yield
    finally:
        _ACTING_FOR.reset(reset)


@contextlib.contextmanager
def _as_caller(principal: Principal) -> Iterator[None]:
    reset = _CALLER.set(principal)
    try:
        yield
    finally:
        _CALLER.reset(reset)


def bind_principal(handler: grpc.RpcMethodHandler, principal: Principal) -> grpc.RpcMethodHandler:
    """`handler` with `principal` as `current_principal()` during each step of its behaviour.
    Streaming behaviours are bound around each `next`, never across a yield, so nothing leaks to
    another call sharing the thread (sync) or lingers in a task (async)."""

    def bind(behaviour: Callable) -> Callable:
        if inspect.isasyncgenfunction(behaviour):

            async def agen(request, context):
                with _as_caller(principal):
                    stream = behaviour(request, context)
                try:
                    while True:
                        with _as_caller(principal):
                            try:
                                item = await stream.__anext__()
                            except StopAsyncIteration:
                                return
                        yield item
                finally:
                    with _as_caller(principal):
                        await stream.aclose()

            return agen
        if inspect.iscoroutinefunction(behaviour):

            async def coro(request, context):
                with _as_caller(principal):
                    return await behaviour(request, context)

            return coro

        def call(request, context):
            with _as_caller(principal):
                result = behaviour(request, context)
            if not isinstance(result, Iterator):
                return result
            return _bound_iterator(result)

        def _bound_iterator(stream: Iterator):
            try:
                while True:
                    with _as_caller(principal):
                        try:
                            item = next(stream)
                        except StopIteration:
                            return
                    yield item
            finally:  # a cancelled call closes this; close the handler's stream as its caller
                close = getattr(stream, "close", None)
                if close is not None:
                    with _as_caller(principal):
                        close()

        return call

    return _rebuild(handler, bind)


def _rebuild(
    handler: grpc.RpcMethodHandler, wrap: Callable[[Callable], Callable]
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` whose behaviour is `wrap(behaviour)`."""
    makers: list[tuple[Callable | None, Callable]] = [
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    ]
    for present, make in makers:
        if present:
            return make(wrap(present), handler.request_deserializer, handler.response_serializer)
    raise ValueError("the handler has no behaviour")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a token whose role grants the method's role (see METHOD_ROLES), and
    runs the others as their principal (`current_principal()`)."""

    def __init__(self, tokens: TokenFile) -> None:
        self.tokens = tokens

    def authorize(self, method: str, metadata) -> Principal | TunewireError | None:
        """The principal this call runs as, the error refusing it, or None for a public
        method."""
        if method in PUBLIC_METHODS:
            return None
        token = bearer_token(metadata)
        if token is None:
            return Unauthenticated(
                "this server requires a token: send the metadata 'authorization: Bearer <token>'",
                reason="TOKEN_MISSING",
            )
        principal = self.tokens.lookup(token)
        if principal is None:
            return Unauthenticated("the token is not known to this server", reason="TOKEN_UNKNOWN")
        needed = required_role(method)
        if needed not in GRANTS[principal.role]:
            return PermissionDenied(
                f"role {principal.role!r} may not call {method} (it needs {needed!r})",
                reason="ROLE_NOT_ALLOWED",
                metadata={"required_role": needed},
            )
        asserted = asserted_principal(metadata)
        if asserted is None or asserted == principal.name:
            return principal
        if principal.role != SERVICE:
            return PermissionDenied(
                f"only a {SERVICE!r} token may act for another principal "
                f"(this token's role is {principal.role!r})",
                reason="PRINCIPAL_ASSERTION_NOT_ALLOWED",
            )
        actor = self.tokens.principal(asserted, needed)
        if actor is None:
            return Unauthenticated(
                "the principal this service acts for is not known to this server",
                reason="PRINCIPAL_UNKNOWN",
            )
        if needed not in GRANTS[actor.role]:
            return PermissionDenied(
                f"principal {actor.name!r} (role {actor.role!r}) may not call {method} "
                f"(it needs {needed!r})",
                reason="ROLE_NOT_ALLOWED",
                metadata={"required_role": needed},
            )
        return Principal(
            actor.name, actor.role, actor.token_id, actor.namespaces, principal.token_id
        )

    def check(self, method: str, metadata) -> TunewireError | None:
        """The error refusing this call, or None when it may proceed."""
        outcome = self.authorize(method, metadata)
        return outcome if isinstance(outcome, TunewireError) else None

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        outcome = self.authorize(method, handler_call_details.invocation_metadata)
        if isinstance(outcome, Principal):
            # In this call's own task (grpc.aio runs each call in one), before the interceptors
            # after this one: they count open streams by it (`admitted_principal`).
            _CALLER.set(outcome)
        handler = await continuation(handler_call_details)
        if handler is None or outcome is None:
            return handler
        if isinstance(outcome, Principal):
            return bind_principal(handler, outcome)
        err = outcome

        def log_refusal(context) -> None:
            log.warning(
                "request refused",
                method=method,
                code=err.code.name,
                reason=err.reason,
                peer=context.peer(),
            )

        # Here, not at the top: clients import this module (tunewire.tls, for the principal a
        # service acts for) and need none of the server's call machinery or its metrics.
        from tunewire.calls import refusing

        return refusing(handler, err, log_refusal)


def admitted_principal() -> Principal | None:
    """The principal AuthInterceptor admitted the current call as; None when it refused the
    call, for a public method, and on a server without tokens (for the call interceptor)."""
    return _CALLER.get()
