"""OpenAI's embeddings API: `POST /v1/embeddings`, `GET /v1/models[/{model}]`.

`input` is a string or a list of strings (token arrays are refused: send text); vectors are
L2-normalised as OpenAI's are; `encoding_format` float or base64 (little-endian float32, what the
official client asks for by default and decodes); `dimensions` only where the model allows it -
these encoders are not trained for shortened vectors, so only their full dimension, as OpenAI
answers for text-embedding-ada-002. `usage` counts the input's tokens with the model's tokenizer.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from clients.http import inputs
from clients.http.backend import Backend
from clients.http.errors import openai_error
from tunewire.errors import InvalidArgument, TunewireError


class EmbeddingsRequest(BaseModel):
    input: Annotated[Any, inputs.TEXTS_SCHEMA]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def router(backend: Backend, token_of) -> APIRouter:
    api = APIRouter(tags=["OpenAI"])

    @api.post("/v1/embeddings")
    async def create_embeddings(body: EmbeddingsRequest, request: Request):
        token = token_of(request)
        try:
            texts = inputs.texts(body.input, "input", allow_empty=False)
            model = await backend.resolve_model(body.model, token)
            if body.dimensions is not None and body.dimensions != model.dimension:
                raise InvalidArgument(
                    f"the model {model.name!r} gives {model.dimension}-dimensional vectors and "
                    "does not support shortened ones",
                    field="dimensions",
                )
            vectors, tokens = await backend.embed_request(
                token, model, texts, normalize=True, truncate=False
            )
        except TunewireError as err:
            return openai_error(err)
        if body.encoding_format == "base64":
            rows = np.ascontiguousarray(vectors, dtype="<f4")
            data = [base64.b64encode(row.tobytes()).decode() for row in rows]
        else:
            data = vectors.tolist()
        # Serialised here: returned as a dict, FastAPI would first walk every float of it
        # (jsonable_encoder), the largest part of a float answer's server time.
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)
                ],
                "model": model.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    def _model(name: str) -> dict:
        return {"id": name, "object": "model", "created": 0, "owned_by": "tunewire"}

    @api.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [_model(name) for name in backend.models]}

    @api.get("/v1/models/{model}")
    async def retrieve_model(model: str):
        if model not in backend.models:
            from tunewire.errors import NotFound

            return openai_error(NotFound(f"the model {model!r} does not exist", field="model"))
        return _model(model)

    return api
