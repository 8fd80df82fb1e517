"""One table from the services' errors to HTTP statuses, and the error bodies each family of
routes answers with: OpenAI's envelope, TEI's, and Ludwig serve's."""

from __future__ import annotations

from starlette.responses import JSONResponse

from tunewire.errors import TunewireError

STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


def http_status(err: TunewireError) -> int:
    if err.reason in ("INPUT_TOO_LONG", "TOO_MANY_INPUTS"):
        return 413  # as TEI answers an input over the model's limit, or too many inputs
    return STATUS.get(err.code.name, 500)


def _message(err: TunewireError) -> str:
    # Internal errors say nothing of the server's insides (the services already say little).
    return str(err) if http_status(err) < 500 or err.code.name == "UNAVAILABLE" else err.message


_OPENAI_TYPES = {
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def openai_error(err: TunewireError) -> JSONResponse:
    """OpenAI's envelope: {"error": {"message", "type", "param", "code"}}."""
    status = http_status(err)
    if status == 413:
        status = 400  # OpenAI refuses an over-long input as a bad request
    kind, code = _OPENAI_TYPES.get(
        status,
        ("invalid_request_error", None) if status < 500 else ("server_error", None),
    )
    if status == 404 and err.field != "model":
        code = "not_found"
    body = {"message": _message(err), "type": kind, "param": err.field, "code": code}
    return JSONResponse({"error": body}, status_code=status)


_TEI_TYPES = {413: "Validation", 400: "Validation", 429: "Overloaded", 503: "Unhealthy"}


def tei_error(err: TunewireError) -> JSONResponse:
    """TEI's body: {"error": message, "error_type": Validation|Overloaded|Unhealthy|Backend}."""
    status = http_status(err)
    kind = _TEI_TYPES.get(status, "Backend" if status >= 500 else "Validation")
    return JSONResponse({"error": _message(err), "error_type": kind}, status_code=status)


def ludwig_error(err: TunewireError) -> JSONResponse:
    """Ludwig serve's body, {"error": message}, with a status that says what went wrong."""
    return JSONResponse({"error": _message(err)}, status_code=http_status(err))


def error_shape(path: str):
    """The error body of the API `path` belongs to: OpenAI's under /v1/, TEI's at /embed and
    /info, else Ludwig serve's."""
    if path.startswith("/v1/"):
        return openai_error
    if path in ("/embed", "/info"):
        return tei_error
    return ludwig_error
