"""Ask the embedder, at admission, whether it can load an encoder a job will embed with, so a bad
name or path fails the job's create with the config's field, not the job later."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tunewire.encoder_spec import EncoderSpec
from tunewire.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    TunewireError,
    Unavailable,
)


def check_encoder_loads(
    embedder: Callable[[], Any], spec: EncoderSpec, path: str, embedder_address: str
) -> None:
    """The embedder loads `spec`'s model, or the error names `path` (the config's field) and
    says whose fault it is: the embedder down, its model roots, the trainer's token, the config."""
    try:
        embedder().info(spec)
    except TunewireError as err:
        if err.reason in ("UNAVAILABLE", "DEADLINE_EXCEEDED") or err.code.name == "UNAVAILABLE":
            raise Unavailable(
                f"the embedder at {embedder_address} is unreachable", field="embedder"
            ) from None
        if err.reason in ("OUTSIDE_MODEL_ROOTS", "HUB_MODELS_OFF"):
            # The embedder's model roots refuse this path: the config's to change.
            raise PermissionDenied(err.message, field=path, reason=err.reason) from None
        if err.code.name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            # The trainer's own credentials, not the client's config, are at fault.
            raise FailedPrecondition(
                f"the embedder refused the trainer's token: {err.message}",
                field="embedder",
                reason="PEER_AUTH_FAILED",
            ) from None
        raise InvalidArgument(
            f"the embedder cannot load this encoder: {err.message}", field=path
        ) from None
