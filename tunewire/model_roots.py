"""Which models a server may read: local directories under its model roots, Hub ids if allowed.

One rule for every service (the embedder's encoders, the trainer's base models, adapted encoders
and Predict's artifacts, the gateway's artifact paths). A server shared by many callers must not
read whatever directory a caller names, nor tell the caller which paths exist: a local reference
outside the roots is refused with the same PERMISSION_DENIED whether or not it exists, before
the filesystem is asked anything else. Roots are compared after resolving symlinks and `..`.

A reference is local when it is absolute, starts with `.` or `~`, or has more than one `/`;
otherwise it is a Hub id (`name` or `owner/name`). Under roots a relative `owner/name` is never
looked up on disk (that lookup was itself a way to learn what exists). Without roots (`dirs`
None: the embedded, single-user mode) any local path is allowed, as on one's own machine, and a
reference that exists on disk is local.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tunewire.errors import PermissionDenied
from tunewire.paths import check_path_text

ENV_ROOTS = "TUNEWIRE_MODEL_ROOTS"


def looks_local(reference: str) -> bool:
    """Whether `reference` names a local path by its spelling alone (no filesystem access)."""
    return reference.startswith(("/", ".", "~")) or reference.count("/") > 1


def under(path: Path, roots: Iterable[Path]) -> bool:
    """Whether `path`, resolved, is one of `roots` or inside one (roots resolved too)."""
    real = Path(path).expanduser().resolve()
    return any(real.is_relative_to(Path(root).expanduser().resolve()) for root in roots)


@dataclass(frozen=True)
class ModelRoots:
    """`dirs`: directories local models must lie under (None: anywhere); `hub`: Hub ids allowed."""

    dirs: tuple[Path, ...] | None = None
    hub: bool = True

    @classmethod
    def anywhere(cls) -> ModelRoots:
        return cls(None, True)

    @classmethod
    def of(cls, dirs: Iterable[Path], hub: bool = True) -> ModelRoots:
        return cls(tuple(Path(d) for d in dirs), hub)

    def is_local(self, reference: str) -> bool:
        if looks_local(reference):
            return True
        # Without roots, an existing relative directory is the caller's own (embedded mode).
        return self.dirs is None and Path(reference).expanduser().exists()

    def check(self, reference: str, field: str) -> None:
        """Refuse `reference` unless this server may read it; no answer says whether a
        refused path exists."""
        check_path_text(reference, field)
        if not self.is_local(reference):
            if not self.hub:
                raise PermissionDenied(
                    f"{reference!r} is a Hub id and this server loads local models only",
                    field=field,
                    reason="HUB_MODELS_OFF",
                )
            return
        if self.dirs is None:
            return
        if not self.dirs or not under(Path(reference), self.dirs):
            raise PermissionDenied(
                f"{reference!r} is not under this server's model roots "
                "(--model-root; the model must be a directory below one of them, or a Hub id)",
                field=field,
                reason="OUTSIDE_MODEL_ROOTS",
            )


def add_model_root_flags(parser: argparse.ArgumentParser, help_extra: str = "") -> None:
    """`--model-root DIR` (repeatable; env TUNEWIRE_MODEL_ROOTS, os.pathsep-separated) and
    `--no-hub-models`."""
    parser.add_argument(
        "--model-root",
        "--model_root",
        type=Path,
        action="append",
        default=[],
        help="directory local models may be read from (repeatable; env "
        f"{ENV_ROOTS}, '{os.pathsep}'-separated; <data-dir>/models always is){help_extra}",
    )
    parser.add_argument(
        "--no-hub-models",
        "--no_hub_models",
        dest="hub_models",
        action="store_false",
        default=os.environ.get("TUNEWIRE_NO_HUB_MODELS", "") not in ("1", "true"),
        help="refuse Hub ids: local models under the roots only (env TUNEWIRE_NO_HUB_MODELS=1)",
    )


def roots_from_args(args: argparse.Namespace, data_dir: Path) -> list[Path]:
    """The roots a server's flags give: <data_dir>/models, the flags, then the env variable."""
    env = [Path(p) for p in os.environ.get(ENV_ROOTS, "").split(os.pathsep) if p]
    return [Path(data_dir) / "models", *args.model_root, *env]
