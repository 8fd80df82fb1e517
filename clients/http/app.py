"""The HTTP front door as one FastAPI application: OpenAI's and TEI's embedding APIs, Ludwig
serve's prediction API, `/health`, `/models`, and the framework's OpenAPI page (`/docs`,
`/openapi.json`).

It is the app layer: it calls the services through the SDK with the caller's own bearer token
(see backend.py) and keeps no state of its own. Past `max_concurrent` requests in flight (or
half as many from one caller) it answers 429 at once, in the calling API's error shape, as TEI
does when overloaded; a body over its size or time limit is 413 or 408 (limits.py).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from clients.http import ludwig_routes, openai_routes, tei_routes
from clients.http.backend import Backend
from clients.http.errors import error_shape, ludwig_error
from clients.http.limits import DEFAULT_MAX_CONCURRENT, BodyLimit, ConcurrencyLimit, env_limits
from tunewire.auth import bearer_token
from tunewire.errors import InvalidArgument, TunewireError


def token_of(request: Request) -> str | None:
    header = request.headers.get("authorization")
    return bearer_token([("authorization", header)]) if header else None


def _framework_error(request: Request, err: TunewireError, status: int) -> JSONResponse:
    """`err` in the shape of the route asked for, with `status`, except that TEI answers a body
    it cannot parse with 422."""
    response = error_shape(request.url.path)(err)
    response.status_code = 422 if request.url.path == "/embed" and status == 400 else status
    return response


def create_app(
    backend: Backend,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    max_per_caller: int | None = None,
    max_body_bytes: int | None = None,
    body_timeout_s: float | None = None,
) -> FastAPI:
    """The app; `max_per_caller` (default: half of `max_concurrent`, so one caller never
    holds every slot), `max_body_bytes` and `body_timeout_s` (default: from the environment,
    limits.env_limits) are limits.py's."""
    env_bytes, env_timeout = env_limits()
    app = FastAPI(
        title="tunewire",
        summary="Embeddings (OpenAI and TEI APIs) and predictions (Ludwig serve's API) from "
        "tunewire's services.",
        version="1",
    )

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":  # its loc is the character's position
            where = "body"
            message = f"the body is not JSON: {first.get('ctx', {}).get('error', message)}"
        return _framework_error(request, InvalidArgument(message, field=where), 400)

    @app.exception_handler(StarletteHTTPException)
    async def framework_error(request: Request, exc: StarletteHTTPException):
        """The framework's own refusals (a body that does not decode or nests too deep, a path
        or method no route has) in the route's error shape, not FastAPI's {"detail": ...}."""
        field = "body" if exc.status_code == 400 else None
        err = InvalidArgument(str(exc.detail), field=field)
        response = _framework_error(request, err, exc.status_code)
        response.headers.update(exc.headers or {})
        return response

    @app.get("/health", tags=["health"])
    async def health():
        if await run_in_threadpool(backend.healthy):
            return {"status": "ok"}
        return JSONResponse({"status": "unavailable"}, status_code=503)

    @app.get("/models", tags=["health"])
    async def models(request: Request):
        """The encoders served by name, the artifact served at /predict, and (with a trainer)
        the caller's finished jobs, each a model for /models/{model}/predict."""
        out = {
            "embedding_models": [
                {"name": m.name, "path": m.path, "default": m.name == backend.default_model}
                for m in backend.models.values()
            ],
            "served_model": backend.served_model,
        }
        if backend.trainer is not None:
            token = token_of(request)

            def jobs():
                from tunewire.v1 import trainer_pb2

                return [
                    j.id
                    for j in backend.trainer.list_jobs()
                    if j.state == trainer_pb2.Job.SUCCEEDED
                ]

            try:
                out["jobs"] = await backend.in_thread(token, jobs)
            except TunewireError as err:
                return ludwig_error(err)
        return out

    app.include_router(openai_routes.router(backend, token_of))
    app.include_router(tei_routes.router(backend, token_of, max_concurrent))
    app.include_router(ludwig_routes.router(backend, token_of))
    # The last added runs first: a request takes its slot, then its body is read.
    app.add_middleware(
        BodyLimit,
        max_bytes=max_body_bytes or env_bytes,
        timeout_s=body_timeout_s or env_timeout,
    )
    app.add_middleware(
        ConcurrencyLimit,
        limit=max_concurrent,
        per_caller=max(1, max_concurrent // 2) if max_per_caller is None else max_per_caller,
    )
    return app
