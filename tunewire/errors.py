"""Domain errors and their one mapping to gRPC status codes.

Services raise these from plain modules (no grpc import needed there); the server interceptor in
`tunewire.server` turns them into a `google.rpc.Status` with an `ErrorInfo` (reason, domain,
field path) so that clients never parse messages. Anything else becomes INTERNAL with a generic
message: stack traces stay in the server's log.
"""

from __future__ import annotations

import grpc

DOMAIN = "tunewire.dev"


class TunewireError(Exception):
    """Base of every error a client may see. `reason` is a stable UPPER_SNAKE identifier."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if reason:
            self.reason = reason
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(TunewireError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFound(TunewireError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(TunewireError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(TunewireError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(TunewireError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(TunewireError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class Unauthenticated(TunewireError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(TunewireError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Cancelled(TunewireError):
    code = grpc.StatusCode.CANCELLED
    reason = "CANCELLED"


class DeadlineExceeded(TunewireError):
    """The server gave up waiting (e.g. a client stream idle past its timeout)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Internal(TunewireError):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


_BY_CODE: dict[grpc.StatusCode, type[TunewireError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        Unauthenticated,
        PermissionDenied,
        Cancelled,
        DeadlineExceeded,
        Internal,
    )
}


def to_status(err: TunewireError):
    """The rich `grpc.Status` for a domain error (google.rpc.Status + ErrorInfo + BadRequest)."""
    from google.protobuf import any_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_status import rpc_status

    details = []
    info = error_details_pb2.ErrorInfo(reason=err.reason, domain=DOMAIN, metadata=err.metadata)
    if err.field:
        info.metadata["field"] = err.field
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if err.field and err.code == grpc.StatusCode.INVALID_ARGUMENT:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=err.field, description=err.message
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    status = status_pb2.Status(
        code=getattr(code_pb2, err.code.name), message=str(err), details=details
    )
    return rpc_status.to_status(status)


def from_rpc_error(exc: grpc.RpcError) -> TunewireError:
    """Rebuild the domain error a server sent (client side), keeping reason and field."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _BY_CODE.get(code, TunewireError)
    reason, field, metadata = None, None, {}
    try:
        status = rpc_status.from_call(exc)
    except Exception:  # a status without rich details (e.g. a transport failure)
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                metadata = dict(info.metadata)
                field = metadata.get("field")
    if field and message and message.startswith(f"{field}: "):
        message = message[len(field) + 2 :]
    err = cls(message or code.name, field=field, reason=reason or code.name, metadata=metadata)
    err.code = code
    return err
