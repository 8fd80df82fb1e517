"""Bearer-token authentication and role checks for every tunewire server.

Tokens live in a file (a mounted Kubernetes Secret in a cluster), one `TOKEN ROLE` per line, `#`
comments allowed; the file is re-read when it changes, so a rotated Secret takes effect without a
restart. Clients send `authorization: Bearer TOKEN` in the call metadata.

Each RPC needs one role (`METHOD_ROLES`, the one table); a role grants itself and the roles listed
in `GRANTS`. Health checks need no token so that Kubernetes probes work; an RPC missing from the
table needs `admin` (fail closed). A missing or unknown token is UNAUTHENTICATED, a known token
whose role does not grant the RPC's role is PERMISSION_DENIED.

Tokens are held only as sha256 digests and never logged; logs name a token by the first 8 hex
digits of its digest (`token_id`), which identifies it to an operator without revealing it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog

from tunewire.errors import PermissionDenied, TunewireError, Unauthenticated, to_status
from tunewire.watch import WatchedFile

log = structlog.get_logger("tunewire.auth")

ADMIN, TRAIN, EMBED, READ = "admin", "train", "embed", "read"
ROLES = (ADMIN, TRAIN, EMBED, READ)
# What each role may do: a train token also embeds (its jobs need vectors) and reads.
GRANTS: dict[str, frozenset[str]] = {
    ADMIN: frozenset(ROLES),
    TRAIN: frozenset({TRAIN, EMBED, READ}),
    EMBED: frozenset({EMBED}),
    READ: frozenset({READ}),
}

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
    role: str
    token_id: str


def parse_tokens(text: str, source: str) -> dict[bytes, Principal]:
    """`TOKEN ROLE` lines → {sha256(token): Principal}. Errors name the line, never the token."""
    tokens: dict[bytes, Principal] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}:{number}: expected 'TOKEN ROLE'")
        token, role = parts
        if role not in GRANTS:
            raise ValueError(
                f"{source}:{number}: unknown role {role!r} (roles: {', '.join(ROLES)})"
            )
        digest = hashlib.sha256(token.encode()).digest()
        if digest in tokens and tokens[digest].role != role:
            raise ValueError(f"{source}:{number}: the same token appears with two roles")
        tokens[digest] = Principal(role, token_id(token))
    if not tokens:
        raise ValueError(f"{source}: no tokens")
    return tokens


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

    def lookup(self, token: str) -> Principal | None:
        data, _ = self._file.read()
        with self._lock:
            if data != self._data:
                try:
                    self._tokens = parse_tokens(data.decode("utf-8", "replace"), str(self.path))
                    log.info("auth tokens reloaded", path=str(self.path), tokens=len(self._tokens))
                except ValueError as exc:
                    log.error(
                        "auth token file rejected; keeping the previous tokens", error=str(exc)
                    )
                self._data = data
            return self._tokens.get(hashlib.sha256(token.encode()).digest())


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer TOKEN` header, or None."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a token whose role grants the method's role (see METHOD_ROLES)."""

    def __init__(self, tokens: TokenFile) -> None:
        self.tokens = tokens

    def check(self, method: str, metadata) -> TunewireError | None:
        """The error refusing this call, or None when it may proceed."""
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
        return None

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        err = self.check(method, handler_call_details.invocation_metadata)
        if err is None:
            return handler
        return _refusing(handler, method, err)


def _refusing(
    handler: grpc.RpcMethodHandler, method: str, err: TunewireError
) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that aborts with `err` without reading input."""
    status = to_status(err)

    def refuse(context: grpc.ServicerContext) -> None:
        log.warning(
            "request refused",
            method=method,
            code=err.code.name,
            reason=err.reason,
            peer=context.peer(),
        )
        context.abort_with_status(status)

    def unary(_request, context):
        refuse(context)

    def streaming(_request, context):
        refuse(context)
        yield  # never reached: makes this a generator, as streaming handlers are

    makers: list[tuple[Callable | None, Callable, Callable]] = [
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler, unary),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, unary),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler, streaming),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, streaming),
    ]
    for present, make, behaviour in makers:
        if present:
            return make(behaviour, handler.request_deserializer, handler.response_serializer)
    raise ValueError(f"handler for {method} has no behaviour")
