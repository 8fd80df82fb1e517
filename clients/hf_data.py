"""Data sets named `hf://datasets/ORG/NAME[@REVISION][/FILE]`, read on the user's side.

The client reads the file with the user's own Hub credentials (HF_TOKEN or `hf auth login`), from
HF_ENDPOINT, and uploads its bytes to the trainer like a local file: the services never hold the
user's Hub token and never reach the Hub for data. huggingface_hub's file system resolves the path
(the revision, and the one data file of a repo when no file is named); the bytes come through
`hf_hub_download`, so they land in the user's Hub cache and a later run with HF_HUB_OFFLINE=1
reads the cached copy without the network.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tunewire.errors import InvalidArgument, NotFound, Unavailable

PREFIX = "hf://"
_PATH = re.compile(
    r"^hf://datasets/(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[^/]+))?(?:/(?P<file>.+))?$"
)
# What a repo may hold that is a table (the trainer's formats, by extension).
DATA_SUFFIXES = (
    ".csv",
    ".tsv",
    ".json",
    ".jsonl",
    ".ndjson",
    ".parquet",
    ".xlsx",
    ".feather",
    ".orc",
)


@dataclass(frozen=True)
class HubDataPath:
    repo_id: str
    revision: str | None
    filename: str | None

    @property
    def url(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"hf://datasets/{self.repo_id}{rev}" + (f"/{self.filename}" if self.filename else "")


def is_hub_path(source: object) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse(source: str, field: str = "dataset") -> HubDataPath:
    match = _PATH.match(source)
    if not match:
        raise InvalidArgument(
            f"{source!r} is not a Hub data set path: use hf://datasets/ORG/NAME[/FILE] "
            "(models are not data sets)",
            field=field,
        )
    return HubDataPath(match["repo"], match["rev"], match["file"])


def fetch(source: str, field: str = "dataset") -> Path:
    """The local path of the Hub file `source` names (downloaded into the Hub cache, or found
    there when HF_HUB_OFFLINE is set)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = parse(source, field)
    offline = constants.HF_HUB_OFFLINE
    try:
        filename = where.filename or (
            _cached_data_file(where, field) if offline else _only_data_file(where, field)
        )
        return Path(
            hf_hub_download(
                where.repo_id,
                filename,
                repo_type="dataset",
                revision=where.revision,
                endpoint=_endpoint(),
            )
        )
    except RepositoryNotFoundError:
        raise _no_repo(where, field) from None
    except RevisionNotFoundError:
        raise NotFound(
            f"{where.repo_id!r} has no revision {where.revision!r}", field=field
        ) from None
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it is one
        raise Unavailable(
            f"{where.url!r} is not in the local Hub cache and HF_HUB_OFFLINE is set"
            if offline
            else f"cannot reach the Hub for {where.url!r}",
            field=field,
        ) from None
    except EntryNotFoundError:
        raise NotFound(f"{where.url!r}: no such file in the repo", field=field) from None
    except FileNotFoundError:  # HfFileSystem's word for a repo it cannot see
        raise _no_repo(where, field) from None
    except HfHubHTTPError as exc:
        raise Unavailable(f"the Hub refused {where.url!r}: {exc}", field=field) from None


def _no_repo(where: HubDataPath, field: str) -> NotFound:
    return NotFound(
        f"no data set repo {where.repo_id!r} on the Hub (or it is private: set HF_TOKEN or "
        "run `hf auth login`)",
        field=field,
    )


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _only_data_file(where: HubDataPath, field: str) -> str:
    """The one table in the repo (any depth), through huggingface_hub's file system."""
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem(endpoint=_endpoint())
    root = f"datasets/{where.repo_id}" + (f"@{where.revision}" if where.revision else "")
    files = [p[len(root) + 1 :] for p in fs.find(root) if p.lower().endswith(DATA_SUFFIXES)]
    return _choose(files, where, field)


def _cached_data_file(where: HubDataPath, field: str) -> str:
    """Offline: the one table in the cached snapshot of the repo."""
    from huggingface_hub import snapshot_download

    folder = Path(
        snapshot_download(
            where.repo_id, repo_type="dataset", revision=where.revision, local_files_only=True
        )
    )
    files = [
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name.lower().endswith(DATA_SUFFIXES)
    ]
    return _choose(files, where, field)


def _choose(files: list[str], where: HubDataPath, field: str) -> str:
    if len(files) == 1:
        return files[0]
    if not files:
        raise NotFound(
            f"{where.url!r} holds no data file ({', '.join(DATA_SUFFIXES)})", field=field
        )
    shown = ", ".join(f"{where.url}/{f}" for f in sorted(files)[:5])
    raise InvalidArgument(
        f"{where.url!r} holds {len(files)} data files; name one: {shown}", field=field
    )
