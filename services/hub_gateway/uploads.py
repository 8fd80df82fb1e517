"""Uploads as resources: an id, a state machine, durable records and a replayable event log.

PENDING → RUNNING → SUCCEEDED | FAILED. Each upload owns `<data_dir>/uploads/<id>/`: `upload.json`
(the record, rewritten atomically), `events.jsonl` (append-only, sequence numbers from 1, what
WatchUpload replays; both kept by `tunewire.records`), `README.md` when the gateway renders the
card, and `files/` when the artifact was streamed. A client that disconnects loses nothing; a
gateway that restarts resumes unfinished uploads, which is safe because an upload is a diff
against the remote followed by one commit.

Every upload belongs to the principal that created it (`tunewire.auth`): another principal gets
NOT_FOUND for it, admin sees all. A principal uploads only to its Hub namespaces. Request ids
(idempotency keys) are the principal's own and bound to the spec they first came with: the same
id with another spec is ALREADY_EXISTS, never someone else's upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from services.hub_gateway.hub_client import CommitResult, HubClient, LocalFile
from services.hub_gateway.validate import require_valid
from tunewire.auth import LOCAL, Principal
from tunewire.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TunewireError,
)
from tunewire.model_card import CONFIG_FILES, render_model_card, without_local_paths
from tunewire.records import RecordStore

log = structlog.get_logger("tunewire.hub_gateway.uploads")

PENDING, RUNNING, SUCCEEDED, FAILED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED"
TERMINAL = (SUCCEEDED, FAILED)


@dataclass
class UploadSpec:
    """What the client asked for (the proto's UploadSpec as plain Python)."""

    repo_id: str
    private: bool = False
    commit_message: str = ""
    commit_description: str = ""
    revision: str = ""
    create_pr: bool = False
    endpoint: str = ""
    dry_run: bool = False
    job_id: str = ""
    overwrite_model_card: bool = False
    request_id: str = ""
    artifact_path: str = ""

    def check(self) -> None:
        parts = self.repo_id.split("/")
        if len(parts) != 2 or not all(parts) or any(c.isspace() for c in self.repo_id):
            raise InvalidArgument(f"{self.repo_id!r} is not ORG/NAME", field="spec.repo_id")


@dataclass
class FileRecord:
    path: str
    size: int
    sha256: str
    lfs: bool = False
    skipped: bool = False


@dataclass
class UploadRecord:
    id: str
    spec: UploadSpec
    source_dir: str
    state: str = PENDING
    artifact_kind: str = ""
    model_card: str = ""
    card_path: str = ""  # the rendered README.md to send, when the artifact's own is not kept
    # name -> a copy to send instead: config files with the server's paths taken out
    redacted: dict[str, str] = field(default_factory=dict)
    files: list[FileRecord] = field(default_factory=list)
    commit_url: str = ""
    commit_oid: str = ""
    error: str = ""
    error_reason: str = ""
    bytes_total: int = 0
    bytes_sent: int = 0
    create_time: float = 0.0
    end_time: float = 0.0
    owner: str = ""  # the principal that created it ("" on a server without tokens)

    @classmethod
    def from_json(cls, data: dict) -> UploadRecord:
        data = dict(data)
        data["spec"] = UploadSpec(**data["spec"])
        data["files"] = [FileRecord(**f) for f in data["files"]]
        return cls(**data)


@dataclass
class UploadEvent:
    upload_id: str
    sequence: int
    state: str
    bytes_sent: int
    bytes_total: int
    files_done: int
    files_total: int
    message: str
    time: float


def is_template_card(text: str) -> bool:
    """PEFT's `save_pretrained` writes the Hub's empty card template; it says nothing about the
    model, so it is replaced like a missing card instead of being kept."""
    return "# Model Card for Model ID" in text and "[More Information Needed]" in text


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class UploadManager:
    """Creates, runs and records uploads. `hub()` builds the HubClient of one upload (the token
    stays inside it, read afresh so a rotated Secret is picked up); `endpoint` is the only Hub the
    gateway's token is ever sent to; `workers` uploads run at a time."""

    def __init__(
        self, data_dir: Path, hub: Callable[[], HubClient], endpoint: str, workers: int = 2
    ) -> None:
        self.root = data_dir / "uploads"
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "requests").mkdir(exist_ok=True)
        self._hub = hub
        self.endpoint = endpoint.rstrip("/")
        # Serialises creates (the idempotency check and the record) without holding the store's
        # lock, which readers need, while an artifact is hashed.
        self._create_lock = threading.Lock()
        self._store: RecordStore[UploadRecord, UploadEvent] = RecordStore(
            self.root,
            "upload.json",
            UploadRecord.from_json,
            lambda d: UploadEvent(**d),
            lambda rec: rec.state in TERMINAL,
            first_sequence=1,
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self._resume()

    # -- persistence ----------------------------------------------------------------------------

    def _dir(self, upload_id: str) -> Path:
        return self._store.dir(upload_id)

    def _request_file(self, owner: str, request_id: str) -> Path:
        """Where `owner`'s request id is recorded (a server without tokens keeps the old name)."""
        key = f"{owner}\n{request_id}" if owner else request_id
        return self.root / "requests" / hashlib.sha256(key.encode()).hexdigest()[:32]

    def _resume(self) -> None:
        """Queue the uploads a previous process left unfinished."""
        for rec in self._store.all():
            if rec.state not in TERMINAL:
                log.info("resuming upload after restart", upload_id=rec.id)
                self._emit(rec, "resumed after a gateway restart")
                self._pool.submit(self._run, rec.id)

    # -- events ---------------------------------------------------------------------------------

    def _emit(self, rec: UploadRecord, message: str) -> None:
        """Record `rec`'s current state and, as the next event, what happened."""
        with self._store.lock:
            self._store.save(rec)
            self._store.append(
                rec.id,
                lambda sequence: UploadEvent(
                    upload_id=rec.id,
                    sequence=sequence,
                    state=rec.state,
                    bytes_sent=rec.bytes_sent,
                    bytes_total=rec.bytes_total,
                    files_done=len(rec.files) if rec.state == SUCCEEDED else 0,
                    files_total=len(rec.files),
                    message=message,
                    time=time.time(),
                ),
            )

    # -- API ------------------------------------------------------------------------------------

    def check_endpoint(self, endpoint: str) -> None:
        """A request may name the gateway's own endpoint, never another: the gateway's token
        would go with the upload."""
        if endpoint and endpoint.rstrip("/") != self.endpoint:
            raise PermissionDenied(
                f"this gateway uploads only to {self.endpoint}",
                field="spec.endpoint",
                reason="ENDPOINT_NOT_ALLOWED",
            )

    @staticmethod
    def check_namespace(spec: UploadSpec, principal: Principal) -> None:
        """The gateway's Hub token can write wherever its owner can; a principal may use it only
        for the Hub namespaces its tokens-file line grants."""
        principal.require_namespace(spec.repo_id, "spec.repo_id")

    def find_by_request(
        self, spec: UploadSpec, principal: Principal = LOCAL
    ) -> UploadRecord | None:
        """The upload an earlier create with this principal's idempotency key made, if any;
        ALREADY_EXISTS when that create asked for something else."""
        if not spec.request_id:
            return None
        path = self._request_file(principal.name, spec.request_id)
        if not path.exists():
            return None
        existing = self.get(path.read_text().strip())
        if existing.spec != spec:
            raise AlreadyExists(
                f"request id {spec.request_id!r} was used for another upload "
                f"({existing.id}); use a new request id for a new upload",
                field="spec.request_id",
                reason="REQUEST_ID_REUSED",
            )
        return existing

    def create(
        self, spec: UploadSpec, source: Path, *, owned: bool, principal: Principal = LOCAL
    ) -> UploadRecord:
        """Validate the artifact in `source`, render its card, record the upload (owned by
        `principal`) and start it (or, for a dry run, finish it at once). `owned`: `source` is a
        staging folder that the upload takes over (moved under its own directory)."""
        spec.check()
        self.check_endpoint(spec.endpoint)
        self.check_namespace(spec, principal)
        with self._create_lock:
            try:
                existing = self.find_by_request(spec, principal)
            except AlreadyExists:
                if owned:
                    shutil.rmtree(source, ignore_errors=True)
                raise
            if existing is not None:
                if owned:
                    shutil.rmtree(source, ignore_errors=True)
                return existing
            upload_id = "up-" + uuid.uuid4().hex[:16]
            updir = self._dir(upload_id)
            updir.mkdir()
            try:
                if owned:
                    source = Path(shutil.move(str(source), str(updir / "files")))
                rec = self._prepare(upload_id, spec, source)
                rec.owner = principal.name
            except BaseException:
                shutil.rmtree(updir, ignore_errors=True)
                raise
            self._store.create(rec)
            if spec.request_id:
                self._request_file(principal.name, spec.request_id).write_text(upload_id)
        log.info(
            "upload created",
            upload_id=upload_id,
            principal=principal.name,
            repo_id=spec.repo_id,
            kind=rec.artifact_kind,
            files=len(rec.files),
            dry_run=spec.dry_run,
        )
        if spec.dry_run:
            self._release_files(rec)
            with self._store.lock:
                rec.state, rec.end_time = SUCCEEDED, time.time()
                self._emit(rec, "dry run: validated and rendered, nothing sent")
        else:
            self._emit(rec, "queued")
            self._pool.submit(self._run, upload_id)
        return rec

    def _prepare(self, upload_id: str, spec: UploadSpec, source: Path) -> UploadRecord:
        validation = require_valid(source)
        rec = UploadRecord(
            id=upload_id,
            spec=spec,
            source_dir=str(source),
            artifact_kind=validation.kind.value,
            create_time=time.time(),
        )
        names = list(validation.files)
        own_card = (
            (source / "README.md").read_text(errors="replace") if "README.md" in names else ""
        )
        # Kept: a card the author wrote. Replaced: PEFT's empty template, and the card tunewire's
        # trainer rendered without knowing the repo (re-rendered now with the repo id).
        if (
            own_card
            and not spec.overwrite_model_card
            and not is_template_card(own_card)
            and own_card != render_model_card(source)
        ):
            rec.model_card = own_card
        else:
            rec.model_card = render_model_card(source, repo_id=spec.repo_id)
            card = self._dir(upload_id) / "README.md"
            card.write_text(rec.model_card)
            rec.card_path = str(card)
            if "README.md" not in names:
                names.append("README.md")
        for name in CONFIG_FILES:
            if name in names:
                self._redact(rec, source / name, self._dir(upload_id) / name)
        for name in sorted(names):
            path = self._local_path(rec, name)
            rec.files.append(FileRecord(path=name, size=path.stat().st_size, sha256=_sha256(path)))
        rec.bytes_total = sum(f.size for f in rec.files)
        return rec

    @staticmethod
    def _redact(rec: UploadRecord, source: Path, copy: Path) -> None:
        """Send a copy of the JSON file `source` without the server's local paths, when it
        holds any (a local base model or encoder; tunewire/model_card.py)."""
        try:
            value = json.loads(source.read_text())
        except (OSError, ValueError):
            return  # validation has passed it; nothing of ours to take out
        public = without_local_paths(value)
        if public != value:
            copy.write_text(json.dumps(public, indent=2))
            rec.redacted[source.name] = str(copy)

    @staticmethod
    def _local_path(rec: UploadRecord, name: str) -> Path:
        if name == "README.md" and rec.card_path:
            return Path(rec.card_path)
        if name in rec.redacted:
            return Path(rec.redacted[name])
        return Path(rec.source_dir) / name

    def get(self, upload_id: str, principal: Principal = LOCAL) -> UploadRecord:
        """The upload, if `principal` may see it; another principal's is NOT_FOUND, word for
        word what a missing one gets."""
        rec = self._store.get(upload_id)
        if rec is None or not principal.owns(rec.owner):
            raise NotFound(f"no upload {upload_id!r}", field="id")
        return rec

    def watch(
        self,
        upload_id: str,
        from_sequence: int = 0,
        is_active: Callable[[], bool] = lambda: True,
        principal: Principal = LOCAL,
    ) -> Iterator[UploadEvent]:
        """Every event from `from_sequence` on, then new ones as they come, until the upload ends
        (or the caller goes away, or the manager closes)."""
        self.get(upload_id, principal)
        return self._store.follow(upload_id, from_sequence, is_active)

    async def watch_async(
        self, upload_id: str, from_sequence: int = 0, principal: Principal = LOCAL
    ) -> AsyncIterator[UploadEvent]:
        """`watch` for an event loop (the async WatchUpload): waiting holds no thread."""
        await asyncio.to_thread(self.get, upload_id, principal)
        async for event in self._store.watch(upload_id, from_sequence):
            yield event

    # -- the work -------------------------------------------------------------------------------

    def _run(self, upload_id: str) -> None:
        rec = self._store.get(upload_id)
        assert rec is not None
        structlog.contextvars.bind_contextvars(upload_id=upload_id)
        with self._store.lock:
            rec.state = RUNNING
            self._emit(rec, f"uploading {len(rec.files)} files to {rec.spec.repo_id}")
        try:
            result = self._upload(rec)
        except TunewireError as exc:
            self._finish(rec, FAILED, str(exc), exc.reason)
        except Exception:  # noqa: BLE001 - a background job must end FAILED, never hang RUNNING
            log.exception("upload crashed")
            self._finish(rec, FAILED, "internal error (see the gateway log)", "INTERNAL")
        else:
            by_path = {f.path: f for f in result.files}
            for f in rec.files:
                f.lfs, f.skipped = by_path[f.path].lfs, by_path[f.path].skipped
            rec.commit_oid, rec.commit_url = result.commit_oid, result.commit_url
            rec.bytes_sent = result.bytes_sent
            done = (
                f"committed {rec.commit_oid[:12]}"
                if result.commit_url
                else "nothing changed: the remote already has every file"
            )
            self._finish(rec, SUCCEEDED, done, "")
        finally:
            structlog.contextvars.unbind_contextvars("upload_id")

    def _upload(self, rec: UploadRecord) -> CommitResult:
        files = [
            LocalFile(f.path, self._local_path(rec, f.path), f.size, f.sha256) for f in rec.files
        ]
        for local, f in zip(files, rec.files):
            if not local.source.is_file() or local.source.stat().st_size != f.size:
                raise InvalidArgument(
                    f"{f.path} changed or vanished since the upload was created",
                    field="spec.artifact_path",
                    reason="ARTIFACT_CHANGED",
                )

        def progress(message: str, sent: int) -> None:
            rec.bytes_sent = sent
            self._emit(rec, message)

        spec = rec.spec
        return self._hub().upload(
            spec.repo_id,
            files,
            private=spec.private,
            commit_message=spec.commit_message,
            commit_description=spec.commit_description,
            revision=spec.revision or None,
            create_pr=spec.create_pr,
            progress=progress,
        )

    def _release_files(self, rec: UploadRecord) -> None:
        """Drop the streamed copy of an artifact once the upload has ended: the record keeps
        names, sizes and hashes, and a new attempt streams the files again."""
        staged = self._dir(rec.id) / "files"
        if Path(rec.source_dir) == staged:
            shutil.rmtree(staged, ignore_errors=True)

    def _finish(self, rec: UploadRecord, state: str, message: str, reason: str) -> None:
        self._release_files(rec)
        if state == FAILED:
            log.info("upload failed", reason=reason, error=message)
        else:
            log.info("upload succeeded", commit=rec.commit_oid)
        # The state and its event change together: a watcher never sees one without the other.
        with self._store.lock:
            rec.state, rec.end_time = state, time.time()
            if state == FAILED:
                rec.error, rec.error_reason = message, reason
            self._emit(rec, message)

    def counts_by_state(self) -> dict[str, int]:
        """How many uploads are in each state (PENDING ones wait for an upload worker)."""
        counts = dict.fromkeys((PENDING, RUNNING, SUCCEEDED, FAILED), 0)
        for rec in self._store.all():
            counts[rec.state] = counts.get(rec.state, 0) + 1
        return counts

    def close(self, wait: bool = True) -> None:
        self._store.close()
        self._pool.shutdown(wait=wait, cancel_futures=True)
