"""text-embeddings-inference's API on the default model (the first `--model`): `POST /embed`
and `GET /info`.

`inputs` a string or a list; `normalize` defaults to true and `truncate` to false, so an input
longer than the model's limit is refused with 413 and TEI's error body, as TEI does. The answer
is always a list of vectors.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from clients.http.backend import Backend
from clients.http.errors import tei_error
from clients.http.inputs import MAX_INPUTS, TEXTS_SCHEMA, renamed, texts
from tunewire.errors import InvalidArgument, TunewireError


class EmbedRequest(BaseModel):
    inputs: Annotated[Any, TEXTS_SCHEMA]
    normalize: bool = True
    truncate: bool = False
    truncation_direction: str = "Right"


def router(backend: Backend, token_of, max_concurrent: int) -> APIRouter:
    api = APIRouter(tags=["TEI"])

    @api.post("/embed")
    async def embed(body: EmbedRequest, request: Request):
        token = token_of(request)
        try:
            if body.truncation_direction.lower() != "right":
                raise InvalidArgument(
                    "only Right truncation is supported", field="truncation_direction"
                )
            try:
                batch = texts(body.inputs, "inputs", allow_empty=True)
            except InvalidArgument as err:
                if err.reason != "INVALID_ARGUMENT":  # empty (400), too many (413)
                    raise
                # Not strings: TEI's body would not deserialize, which it answers with 422.
                response = tei_error(err)
                response.status_code = 422
                return response
            model = await backend.resolve_model(None, token)
            vectors, _ = await backend.embed_request(
                token, model, batch, normalize=body.normalize, truncate=body.truncate
            )
        except TunewireError as err:
            return tei_error(renamed(err, "input", "inputs"))
        return vectors.tolist()

    @api.get("/info")
    async def info(request: Request):
        token = token_of(request)

        try:
            model = await backend.in_thread(token, backend.model, None)
        except TunewireError as err:
            return tei_error(err)
        return {
            "model_id": model.name,
            "model_sha": None,
            "model_dtype": model.compute_dtype or "float32",
            "model_type": {"embedding": {"pooling": model.spec.pooling}},
            "max_concurrent_requests": max_concurrent,
            "max_input_length": model.max_length,
            "max_client_batch_size": MAX_INPUTS,
            "dimension": model.dimension,
            "version": "tunewire",
        }

    return api
