"""One upload to a Hugging Face Hub-compatible server: repo, diff, one commit, verification.

`huggingface_hub` does the wire protocol (preupload, LFS batch/PUT/verify, the NDJSON commit); this
module adds what a service needs around it: a token that is never logged nor echoed, retries with
exponential backoff (honouring Retry-After) for transient failures only, HTTP failures mapped to
tunewire's domain errors, and idempotence. Each attempt first asks the Hub which files it already
has with the same content (`get_paths_info`, public API in huggingface_hub 0.2x and 1.x alike), so
a retry after a commit whose answer was lost commits nothing twice, and a re-upload of an unchanged
artifact sends no large file.

`huggingface_hub` (with its HTTP stack, ~0.1 s to import) is imported by the first upload, not
with the gateway: a process that starts the gateway and never uploads (the CLI's embedded mode)
does not pay for it.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from tunewire.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TunewireError,
    Unauthenticated,
    Unavailable,
)

log = structlog.get_logger("tunewire.hub_gateway.hub_client")

# Exception modules whose errors are transport failures (connection reset, timeout, protocol).
_TRANSPORT_MODULES = ("httpx", "httpx2", "httpcore", "requests", "urllib3", "h11", "h2")


@dataclass(frozen=True)
class LocalFile:
    """A file to upload: where it is in the repo, where it is on disk, and its content hash."""

    path: str
    source: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class FileOutcome:
    path: str
    size: int
    sha256: str
    lfs: bool
    skipped: bool  # already on the remote with the same content


@dataclass(frozen=True)
class CommitResult:
    commit_oid: str
    commit_url: str
    files: list[FileOutcome]
    bytes_sent: int


class _Transient(Exception):
    """An attempt failed in a way that another attempt may not (5xx, 429, reset connection)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file's content: what the Hub reports for non-LFS files."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and exc not in out:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return out


# huggingface_hub's shared HTTP client waits forever (timeout=None): a Hub that accepts a
# connection and then says nothing would hold an upload worker for good. httpx timeouts apply to
# each socket operation, so a long LFS transfer that keeps moving is not cut short.
DEFAULT_HTTP_TIMEOUT_S = 60.0
_timeout_lock = threading.Lock()
_installed_timeout: float | None = None


def use_http_timeout(seconds: float) -> None:
    """Make huggingface_hub's process-wide HTTP client give up after `seconds` of silence."""
    global _installed_timeout
    with _timeout_lock:
        if _installed_timeout == seconds:
            return
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils._http import default_client_factory

        def factory():
            client = default_client_factory()
            client.timeout = seconds
            return client

        set_client_factory(factory)
        _installed_timeout = seconds


class HubClient:
    """Talks to one Hub endpoint with one token. Safe to share between threads (no state but the
    HfApi, which is itself stateless apart from its session)."""

    def __init__(
        self,
        endpoint: str | None,
        token: str | None,
        *,
        max_attempts: int = 5,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S,
    ) -> None:
        from huggingface_hub import HfApi

        use_http_timeout(http_timeout_s)
        self.endpoint = endpoint
        self._token = token
        # token=False: never fall back to a token cached on the gateway's disk.
        self._api = HfApi(endpoint=endpoint, token=token or False)
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._sleep = sleep

    # -- error handling -------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _map(self, exc: BaseException, what: str, repo_id: str, revision: str) -> BaseException:
        """A domain error (permanent), a _Transient, or the exception itself (a bug: INTERNAL)."""
        from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

        for err in _chain(exc):
            if isinstance(err, HfHubHTTPError) and getattr(err, "response", None) is not None:
                status = err.response.status_code
                server = self._redact(getattr(err, "server_message", None) or "")
                detail = f"{what}: the Hub answered {status}{f' ({server})' if server else ''}"
                if status == 429 or status >= 500:
                    return _Transient(detail, _retry_after(err.response.headers))
                if status == 401:
                    return Unauthenticated(
                        f"{detail}; the gateway's Hub token was rejected",
                        reason="HUB_UNAUTHENTICATED",
                    )
                if status == 403:
                    return PermissionDenied(
                        f"{detail}; the token may not write to {repo_id}",
                        reason="HUB_PERMISSION_DENIED",
                    )
                if status == 404:
                    if isinstance(err, RevisionNotFoundError):
                        return NotFound(
                            f"revision {revision!r} not found in {repo_id}",
                            field="spec.revision",
                            reason="HUB_REVISION_NOT_FOUND",
                        )
                    return NotFound(
                        f"{detail}; repo {repo_id} not found",
                        field="spec.repo_id",
                        reason="HUB_REPO_NOT_FOUND",
                    )
                if status in (400, 422):
                    return InvalidArgument(detail, reason="HUB_REJECTED_REQUEST")
                return FailedPrecondition(detail, reason="HUB_REJECTED")
            module = type(err).__module__.split(".")[0]
            if (
                module in _TRANSPORT_MODULES or isinstance(err, (ConnectionError, TimeoutError))
            ) and not isinstance(err, HfHubHTTPError):
                return _Transient(f"{what}: {type(err).__name__}: {self._redact(str(err))[:200]}")
        return exc

    def _retry(self, what: str, fn: Callable[[], object], repo_id: str, revision: str):
        """Run `fn` until it succeeds, a permanent error occurs, or attempts run out."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except TunewireError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified right here, re-raised otherwise
                mapped = self._map(exc, what, repo_id, revision)
                if not isinstance(mapped, _Transient):
                    if mapped is exc:
                        raise
                    raise mapped from None
                if attempt == self.max_attempts:
                    raise Unavailable(
                        f"{mapped} (gave up after {attempt} attempts)", reason="HUB_UNAVAILABLE"
                    ) from None
                delay = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
                delay = delay * (0.5 + random.random() / 2)
                if mapped.retry_after is not None:
                    delay = min(self.max_delay_s, max(delay, mapped.retry_after))
                log.warning(
                    "hub call failed, retrying",
                    what=what,
                    attempt=attempt,
                    delay_s=round(delay, 2),
                    error=str(mapped),
                )
                self._sleep(delay)
        raise AssertionError("unreachable")

    # -- the upload -----------------------------------------------------------------------------

    def _remote(self, repo_id: str, paths: list[str], revision: str | None) -> dict[str, object]:
        infos = self._api.get_paths_info(repo_id, paths, revision=revision, repo_type="model")
        return {info.path: info for info in infos if hasattr(info, "blob_id")}

    @staticmethod
    def _same(local: LocalFile, remote: object | None) -> bool:
        if remote is None:
            return False
        lfs = getattr(remote, "lfs", None)
        if lfs is not None:
            sha = lfs.sha256 if hasattr(lfs, "sha256") else lfs.get("sha256")
            return sha == local.sha256
        return getattr(remote, "size", None) == local.size and getattr(
            remote, "blob_id", None
        ) == git_blob_sha1(local.source)

    def upload(
        self,
        repo_id: str,
        files: list[LocalFile],
        *,
        private: bool = False,
        commit_message: str = "",
        commit_description: str = "",
        revision: str | None = None,
        create_pr: bool = False,
        progress: Callable[[str, int], None] = lambda message, sent: None,
    ) -> CommitResult:
        """Create the repo if missing, then commit every file that differs from the remote in one
        commit on `revision` (or a PR against it). Returns what was sent and what was skipped."""
        rev = revision or "main"
        bytes_total = sum(f.size for f in files)
        url = self._retry(
            "create repo",
            lambda: self._api.create_repo(
                repo_id, private=private, exist_ok=True, repo_type="model"
            ),
            repo_id,
            rev,
        )
        log.info("repo ready", repo_id=repo_id, url=str(url))
        paths = [f.path for f in files]
        sent: dict[str, bool] = {}

        def attempt() -> tuple[str, str] | None:
            remote = self._remote(repo_id, paths, revision)
            changed = [f for f in files if not self._same(f, remote.get(f.path))]
            for f in files:
                sent.setdefault(f.path, f in changed)
            if not changed:
                return None
            progress(f"committing {len(changed)} of {len(files)} files", 0)
            from huggingface_hub import CommitOperationAdd

            ops = [
                CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=str(f.source))
                for f in changed
            ]
            info = self._api.create_commit(
                repo_id,
                ops,
                commit_message=commit_message or f"Upload {repo_id} with tunewire",
                commit_description=commit_description or None,
                revision=revision,
                create_pr=create_pr,
                repo_type="model",
            )
            return info.oid, info.pr_url or info.commit_url

        committed = self._retry("commit", attempt, repo_id, rev)
        if committed is None:
            oid = self._retry(
                "repo info",
                lambda: self._api.repo_info(repo_id, revision=revision, repo_type="model").sha,
                repo_id,
                rev,
            )
            commit_url = ""
        else:
            oid, commit_url = committed
        skipped = {p for p, was_sent in sent.items() if not was_sent}
        bytes_sent = sum(f.size for f in files if f.path not in skipped)
        # Verify what the commit holds, and learn which files went through LFS.
        remote = self._retry("verify", lambda: self._remote(repo_id, paths, oid), repo_id, rev)
        wrong = [f.path for f in files if not self._same(f, remote.get(f.path))]
        if wrong:
            raise FailedPrecondition(
                f"after the commit the Hub holds different content for: {', '.join(wrong)}",
                reason="HUB_VERIFY_FAILED",
            )
        outcomes = [
            FileOutcome(
                f.path,
                f.size,
                f.sha256,
                getattr(remote[f.path], "lfs", None) is not None,
                f.path in skipped,
            )
            for f in files
        ]
        progress(
            "committed" if committed else "nothing to commit: the remote is up to date", bytes_sent
        )
        log.info(
            "upload committed" if committed else "remote already up to date",
            repo_id=repo_id,
            commit=oid,
            files=len(files),
            skipped=len(skipped),
            bytes_sent=bytes_sent,
            bytes_total=bytes_total,
        )
        return CommitResult(
            commit_oid=oid, commit_url=commit_url, files=outcomes, bytes_sent=bytes_sent
        )


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
