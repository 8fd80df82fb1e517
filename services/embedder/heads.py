"""Predictive heads kept warm next to the encoders, for online prediction.

A head comes from a local artifact directory (under the embedder's artifact roots) or, by job id,
from the trainer's `DownloadArtifact`: only the four files a head needs, fetched on the caller's
behalf (artifact_fetch.py), so the trainer decides whether this caller may read this job (its
owner, as everywhere). A fetched head is cached per (job, caller) - another caller is authorised
by the trainer again, never served from someone else's fetch - and evicted least recently used
beyond a byte budget. Local artifacts are cached per (path, files' size and mtime), so a
retrained artifact written over the old one is noticed.

A path under a trainer's artifacts directory (`job_roots`: `serve all` and the embedded mode share
one data directory) is a job's artifact, and is served as that job: fetched through the trainer
on the caller's behalf, so another principal's artifact is NOT_FOUND by its path as by its id.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from tunewire import heads as th
from tunewire.auth import current_principal
from tunewire.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from tunewire.features import InputMetadata
from tunewire.model_roots import under
from tunewire.paths import check_path_text

log = structlog.get_logger(__name__)

# The files a head needs; plots, model cards and exports stay on the trainer.
HEAD_FILES = (th.MANIFEST_FILE, th.CONFIG_FILE, th.METADATA_FILE, th.HEAD_FILE)
DEFAULT_HEAD_CACHE_BYTES = 256 * 1024 * 1024

# fetch(job_id, caller's token or None, files, destination directory)
Fetch = Callable[[str, str | None, tuple[str, ...], Path], None]


@dataclass
class ServedHead:
    """A predictive model ready to serve: the head on the CPU, in eval mode."""

    model: th.PredictiveModel
    config: object  # tunewire.config.ecd.EcdConfig
    encoders: dict[str, th.EncoderRef]
    input_metas: dict[str, InputMetadata]
    nbytes: int


def is_job_id(model: str) -> bool:
    return model.startswith("job-") and "/" not in model


def load_head(directory: Path) -> ServedHead:
    """Load an artifact's head; FAILED_PRECONDITION for what online prediction does not serve."""
    manifest = directory / th.MANIFEST_FILE
    if not manifest.is_file():
        raise NotFound(f"no tunewire artifact at {str(directory)!r}", field="model")
    kind = json.loads(manifest.read_text()).get("kind")
    if kind != "predictive":
        raise FailedPrecondition(
            f"online prediction serves predictive (ecd) models; this is a {kind} model: use the "
            "trainer's batch Predict, or serve it with vLLM/TGI",
            field="model",
        )
    loaded = th.load(directory)
    adapted = [name for name, ref in loaded.encoders.items() if ref.adapted]
    if adapted:
        raise FailedPrecondition(
            f"feature {adapted[0]!r} has an adapted (trainable) encoder, which online prediction "
            "does not run: use the trainer's batch Predict",
            field="model",
        )
    model = loaded.model.cpu().eval()
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    metas = {s.name: s.meta for s in model.inputs if s.meta is not None}
    return ServedHead(model, loaded.config, loaded.encoders, metas, nbytes + 64 * 1024)


class HeadCache:
    """Loaded heads, least recently used evicted beyond `max_bytes` (the newest always stays)."""

    def __init__(
        self,
        roots: list[Path] | None = None,
        fetch: Fetch | None = None,
        max_bytes: int = DEFAULT_HEAD_CACHE_BYTES,
        allow_any_path: bool = False,
        job_roots: list[Path] | None = None,
    ) -> None:
        """`job_roots`: trainers' artifacts directories, whose entries are jobs' artifacts."""
        self.roots = [Path(r).resolve() for r in roots or []]
        self.job_roots = [Path(r).resolve() for r in job_roots or []]
        self.fetch = fetch
        self.max_bytes = max_bytes
        self.allow_any_path = allow_any_path
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, ServedHead] = OrderedDict()
        self._bytes = 0
        self._loading: dict[tuple, threading.Lock] = {}

    def get(self, model: str, token: str | None) -> ServedHead:
        if not model.strip():
            raise InvalidArgument("is required: a job id or an artifact directory", field="model")
        check_path_text(model, "model")
        if not is_job_id(model):
            model = self._job_of_path(model)
        if is_job_id(model):
            # Per caller: another one is authorised by the trainer again, never served from
            # someone else's fetch.
            caller = current_principal().name
            digest = hashlib.sha256((token or "").encode()).hexdigest()[:16]
            key = ("job", model, caller, digest)
            return self._get(key, lambda: self._fetched(model, token))
        path = self._local(model)
        signature = tuple(
            (name, (path / name).stat().st_size, (path / name).stat().st_mtime_ns)
            for name in HEAD_FILES
            if (path / name).is_file()
        )
        return self._get(("path", str(path), signature), lambda: load_head(path))

    def _job_of_path(self, model: str) -> str:
        """The job id a path under a job root names (`<root>/<job id>`), else `model` itself;
        anything else under a job root (a subdirectory, a staging directory) holds no model."""
        path = Path(model).expanduser().resolve()
        for root in self.job_roots:
            if path.is_relative_to(root):
                parts = path.relative_to(root).parts
                if len(parts) == 1 and is_job_id(parts[0]):
                    return parts[0]
                raise NotFound(f"no model artifact at {model!r}", field="model")
        return model

    def _local(self, model: str) -> Path:
        path = Path(model).expanduser().resolve()
        if not self.allow_any_path and not under(path, self.roots):
            raise PermissionDenied(
                "the embedder may not read artifacts outside its artifact roots", field="model"
            )
        if not (path / th.MANIFEST_FILE).is_file():
            raise NotFound(f"no model artifact at {model!r}", field="model")
        return path

    def _fetched(self, job_id: str, token: str | None) -> ServedHead:
        if self.fetch is None:
            raise FailedPrecondition(
                "this embedder has no trainer to fetch a job's model from (--trainer); give an "
                "artifact directory instead",
                field="model",
            )
        with tempfile.TemporaryDirectory(prefix="tunewire-head-") as tmp:
            self.fetch(job_id, token, HEAD_FILES, Path(tmp))
            return load_head(Path(tmp))

    def _get(self, key: tuple, load: Callable[[], ServedHead]) -> ServedHead:
        with self._lock:
            head = self._entries.get(key)
            if head is not None:
                self._entries.move_to_end(key)
                return head
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one thread loads a given head; the others wait for it
            with self._lock:
                head = self._entries.get(key)
                if head is not None:
                    return head
            try:
                head = load()
            except BaseException:  # a refused load keeps no lock (one per probed id, forever)
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                self._loading.pop(key, None)
                self._entries[key] = head
                self._bytes += head.nbytes
                while self._bytes > self.max_bytes and len(self._entries) > 1:
                    old, evicted = self._entries.popitem(last=False)
                    self._bytes -= evicted.nbytes
                    log.info("head evicted", model=old[1], bytes=evicted.nbytes)
            log.info("head loaded", model=key[1], bytes=head.nbytes)
            return head

    def stats(self) -> tuple[int, int]:
        """(heads, bytes) held now."""
        with self._lock:
            return len(self._entries), self._bytes
