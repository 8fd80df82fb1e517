"""Resolving `EncoderSpec.model` (a local directory or a Hub id) to files on this machine.

A Hub model is resolved to a snapshot directory whose name is the commit hash: that commit is the
weights identity in the fingerprint, so moving a branch never serves stale vectors. The Hub
environment (`HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN`) is read at call time, not at import, so a
server and its tests see the environment they run with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from tunewire.errors import InvalidArgument, NotFound, Unauthenticated, Unavailable
from tunewire.model_roots import ModelRoots

log = structlog.get_logger(__name__)

FIELD = "encoder.model"
# Files a frozen encoder needs: config, tokenizer, weights. Safetensors first; *.bin only as a
# fallback for repos that have nothing else.
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.safetensors"]
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ModelSource:
    """Where an encoder's files are, and what identifies them."""

    path: Path
    hub_id: str | None = None  # set for Hub models
    commit: str | None = None  # the resolved Hub commit


def _offline() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or constants.HF_HUB_OFFLINE


def resolve(model: str, revision: str = "", roots: ModelRoots | None = None) -> ModelSource:
    """Map a model reference to a local directory, or raise a domain error a person can act on.
    `roots`: what this server may read (tunewire.model_roots; default anywhere), checked before
    the filesystem is asked anything."""
    roots = roots or ModelRoots.anywhere()
    if not model.strip():
        raise InvalidArgument(
            "the encoder model is empty: give a local directory or a Hub id", field=FIELD
        )
    roots.check(model, FIELD)
    if roots.is_local(model):
        if revision:
            raise InvalidArgument(
                f"a revision applies to Hub ids only, not to local directory {model!r}",
                field="encoder.revision",
            )
        path = Path(model).expanduser()
        if not path.exists():
            raise NotFound(f"local model directory {model!r} does not exist", field=FIELD)
        if not path.is_dir() or not (path / "config.json").is_file():
            raise InvalidArgument(
                f"{model!r} is not a model directory (no config.json in it)", field=FIELD
            )
        return ModelSource(path=path.resolve())
    return _resolve_hub(model, revision)


def _resolve_hub(repo_id: str, revision: str) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline()
    kwargs = dict(
        repo_id=repo_id,
        revision=revision or None,
        local_files_only=offline,
        token=os.environ.get("HF_TOKEN") or None,
        endpoint=os.environ.get("HF_ENDPOINT") or None,
    )
    try:
        path = Path(snapshot_download(allow_patterns=_HUB_PATTERNS, **kwargs))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(allow_patterns=["*.bin"], **kwargs))
    except HFValidationError:
        raise InvalidArgument(
            f"{repo_id!r} is neither an existing local directory nor a valid Hub id (owner/name)",
            field=FIELD,
        ) from None
    except GatedRepoError:
        raise Unauthenticated(
            f"Hub model {repo_id!r} is gated: set HF_TOKEN to a token with access", field=FIELD
        ) from None
    except RevisionNotFoundError:
        raise NotFound(
            f"revision {revision!r} of Hub model {repo_id!r} does not exist",
            field="encoder.revision",
        ) from None
    except RepositoryNotFoundError:
        raise NotFound(
            f"Hub model {repo_id!r} does not exist (or is private: set HF_TOKEN)", field=FIELD
        ) from None
    except LocalEntryNotFoundError:
        where = "the Hub is offline (HF_HUB_OFFLINE)" if offline else "the Hub cannot be reached"
        raise NotFound(
            f"Hub model {repo_id!r} is not in the local cache and {where}", field=FIELD
        ) from None
    except OSError as exc:
        raise Unavailable(f"could not download Hub model {repo_id!r}: {exc}", field=FIELD) from None
    if not (path / "config.json").is_file():
        raise InvalidArgument(
            f"Hub repo {repo_id!r} has no config.json: not a transformers model", field=FIELD
        )
    log.info("hub model resolved", hub_id=repo_id, revision=revision or "main", commit=path.name)
    return ModelSource(path=path, hub_id=repo_id, commit=path.name)
