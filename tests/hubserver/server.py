"""A Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1.

It speaks the subset of the Hub API that `huggingface_hub` uses to create a repo, upload in one
commit (preupload, NDJSON commit, LFS batch + PUT + verify) and download again (repo info, tree,
paths-info, resolve with the X-Repo-Commit / ETag / X-Linked-* headers). Repos live under one
directory on disk: file contents content-addressed by sha256, each repo's branches and commits in a
JSON file. Faults can be injected per request (status codes, a dropped connection during a body)
and every request is counted so tests can assert "exactly one commit" or "no LFS PUT".
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Upload modes follow the Hub's default .gitattributes: weights are LFS whatever their size.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")
_LFS_SPEC = "version https://git-lfs.github.com/spec/v1\n"
_API_REPO = re.compile(
    r"^/api/(?P<kind>models|datasets)/(?P<repo>[^/]+/[^/]+)(?:/(?P<op>preupload|commit|paths-info|tree|revision)"
    r"/(?P<rev>[^/]+)(?:/(?P<path>.*))?)?$"
)


def _store_key(kind: str, repo_id: str) -> str:
    """Model repos are stored under their id, data set repos under `datasets/<id>` (the Hub's
    URL scheme), so a model and a data set may share a name."""
    return f"datasets/{repo_id}" if kind in ("dataset", "datasets") else repo_id


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"{_LFS_SPEC}oid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Fault:
    """Answer requests matching `method` and `path` (a regex) with `status`, or drop the
    connection mid-body when `status` is None, `times` times."""

    method: str
    path: str
    status: int | None
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)


class HubStore:
    """Repos on disk. One lock: the server is for tests, correctness over concurrency."""

    def __init__(self, root: Path, lfs_threshold: int) -> None:
        self.root = root
        self.objects = root / "objects"
        self.repos = root / "repos"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.repos.mkdir(parents=True, exist_ok=True)
        self.lfs_threshold = lfs_threshold
        self.lock = threading.RLock()

    def _repo_file(self, repo_id: str) -> Path:
        return self.repos / (repo_id.replace("/", "__") + ".json")

    def load(self, repo_id: str) -> dict[str, Any] | None:
        path = self._repo_file(repo_id)
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, repo_id: str, repo: dict[str, Any]) -> None:
        tmp = self._repo_file(repo_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(repo))
        tmp.replace(self._repo_file(repo_id))

    def put_object(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.objects / sha
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return sha

    def has_object(self, sha256: str, size: int | None = None) -> bool:
        path = self.objects / sha256
        return path.exists() and (size is None or path.stat().st_size == size)

    def read_object(self, sha256: str) -> bytes:
        return (self.objects / sha256).read_bytes()

    def is_lfs(self, path: str, size: int) -> bool:
        return size >= self.lfs_threshold or path.endswith(LFS_SUFFIXES)

    def entry(self, path: str, data: bytes | None, sha256: str, size: int, lfs: bool) -> dict:
        blob = git_blob_sha1(lfs_pointer(sha256, size)) if lfs else git_blob_sha1(data or b"")
        return {
            "sha256": sha256,
            "size": size,
            "lfs": lfs,
            "blob": blob,
            "pointer_size": len(lfs_pointer(sha256, size)) if lfs else 0,
        }

    def create_repo(self, repo_id: str, private: bool) -> bool:
        """False when it exists already."""
        with self.lock:
            if self.load(repo_id) is not None:
                return False
            data = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
            sha = self.put_object(data)
            files = {".gitattributes": self.entry(".gitattributes", data, sha, len(data), False)}
            oid = self._commit_oid(None, files, "initial commit")
            repo = {
                "id": repo_id,
                "private": private,
                "branches": {"main": oid},
                "commits": {
                    oid: {
                        "parent": None,
                        "summary": "initial commit",
                        "description": "",
                        "files": files,
                        "time": time.time(),
                    }
                },
                "prs": 0,
            }
            self.save(repo_id, repo)
            return True

    @staticmethod
    def _commit_oid(parent: str | None, files: dict, summary: str) -> str:
        payload = json.dumps(
            [parent, sorted((p, e["blob"]) for p, e in files.items()), summary, time.time_ns()]
        )
        return hashlib.sha1(payload.encode()).hexdigest()

    def resolve(self, repo: dict, rev: str) -> str | None:
        if rev in repo["branches"]:
            return repo["branches"][rev]
        if rev in repo["commits"]:
            return rev
        return None

    def commit(
        self, repo_id: str, rev: str, header: dict, ops: list[tuple[str, dict]], create_pr: bool
    ) -> tuple[str, str | None]:
        """Apply ops atomically on top of `rev`; returns (commit oid, pr branch or None)."""
        with self.lock:
            repo = self.load(repo_id)
            assert repo is not None
            parent = self.resolve(repo, rev)
            if parent is None:
                raise KeyError(rev)
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise ValueError("parent commit is not the head of the revision")
            files = dict(repo["commits"][parent]["files"])
            for key, value in ops:
                if key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: e for p, e in files.items() if not p.startswith(prefix)}
                else:
                    files[value["path"]] = value["entry"]
            summary = header.get("summary") or ""
            oid = self._commit_oid(parent, files, summary)
            repo["commits"][oid] = {
                "parent": parent,
                "summary": summary,
                "description": header.get("description") or "",
                "files": files,
                "time": time.time(),
            }
            branch = rev
            pr = None
            if create_pr:
                repo["prs"] += 1
                pr = f"refs/pr/{repo['prs']}"
                branch = pr
            elif rev not in repo["branches"]:
                raise KeyError(rev)
            repo["branches"][branch] = oid
            self.save(repo_id, repo)
            return oid, pr


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        self.server.hub.request_log.append(f"{self.command} {self.path}")

    # -- plumbing -------------------------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), headers)

    def _error(
        self,
        status: int,
        message: str,
        code: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _fault(self) -> bool:
        """Apply the first matching fault; True when the request was answered (or dropped)."""
        hub = self.server.hub
        with hub.lock:
            for fault in hub.faults:
                if (
                    fault.times > 0
                    and fault.method == self.command
                    and re.search(fault.path, urlsplit(self.path).path)
                ):
                    fault.times -= 1
                    break
            else:
                return False
        if fault.status is None:
            # Read part of the body, then drop the connection without answering.
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, max(1, length // 2)))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True
        self._body()
        self._error(fault.status, f"injected {fault.status}", extra=fault.headers)
        return True

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[7:] if auth.startswith("Bearer ") else None

    def _authorized_write(self) -> bool:
        hub = self.server.hub
        if hub.tokens is None:
            return True
        if self._token() in hub.tokens:
            return True
        self._body()
        self._error(401, "Invalid credentials in Authorization header")
        return False

    def _readable(self, repo: dict | None, repo_id: str) -> bool:
        hub = self.server.hub
        if repo is None or (
            repo["private"] and hub.tokens is not None and self._token() not in hub.tokens
        ):
            self._body()
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
            return False
        return True

    @property
    def base(self) -> str:
        return self.server.base_url

    def _count(self, name: str) -> None:
        with self.server.hub.lock:
            self.server.hub.counts[name] = self.server.hub.counts.get(name, 0) + 1

    # -- dispatch -------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        self._count(f"{self.command} {re.sub(r'/[0-9a-f]{64}$', '/<oid>', path)}")
        if path.startswith("/lfs-upload/") and self.command == "PUT":
            self._count("lfs_put_attempts")
        if self._fault():
            return
        if path == "/api/repos/create" and self.command == "POST":
            return self._create_repo()
        if path == "/api/validate-yaml" and self.command == "POST":
            self._body()
            return self._json(200, {"errors": [], "warnings": []})
        if path == "/api/whoami-v2":
            return self._json(200, {"name": "user", "type": "user"})
        match = _API_REPO.match(path)
        if match:
            return self._api(
                _store_key(match["kind"], match["repo"]),
                match["op"],
                unquote(match["rev"] or ""),
                unquote(match["path"] or ""),
                query,
            )
        match = re.match(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$", path)
        if match and self.command == "POST":
            return self._lfs_batch(match["repo"])
        match = re.match(r"^/lfs-upload/(?P<repo>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})$", path)
        if match and self.command == "PUT":
            return self._lfs_put(match["repo"], match["oid"])
        match = re.match(r"^/lfs-verify/(?P<repo>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})$", path)
        if match and self.command == "POST":
            return self._lfs_verify(match["oid"])
        match = re.match(
            r"^/(?P<kind>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$",
            path,
        )
        if match and self.command in ("GET", "HEAD"):
            key = _store_key("datasets" if match["kind"] else "models", match["repo"])
            return self._resolve(key, unquote(match["rev"]), unquote(match["file"]))
        self._body()
        self._error(404, f"no route for {self.command} {path}")

    # -- endpoints ------------------------------------------------------------------------------

    def _create_repo(self) -> None:
        if not self._authorized_write():
            return
        payload = json.loads(self._body() or b"{}")
        name, org = payload.get("name"), payload.get("organization") or "user"
        repo_id = _store_key(payload.get("type") or "model", f"{org}/{name}")
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        created = self.server.hub.store.create_repo(repo_id, private)
        if not created:
            return self._json(
                409,
                {"error": "You already created this model repo", "url": f"{self.base}/{repo_id}"},
            )
        self._count("repos_created")
        shown = repo_id.removeprefix("datasets/")
        self._json(200, {"url": f"{self.base}/{repo_id}", "name": shown, "id": shown})

    def _api(self, repo_id: str, op: str | None, rev: str, sub: str, query: dict) -> None:
        store = self.server.hub.store
        repo = store.load(repo_id)
        if not self._readable(repo, repo_id):
            return
        assert repo is not None
        if op in ("preupload", "commit") and not self._authorized_write():
            return
        if op is None or op == "revision":
            rev = rev or "main"
            oid = store.resolve(repo, rev)
            if oid is None:
                self._body()
                return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            files = repo["commits"][oid]["files"]
            shown = repo_id.removeprefix("datasets/")
            return self._json(
                200,
                {
                    "id": shown,
                    "modelId": shown,
                    "sha": oid,
                    "private": repo["private"],
                    "author": shown.split("/")[0],
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                    "tags": [],
                    "downloads": 0,
                    "likes": 0,
                },
            )
        oid = store.resolve(repo, rev)
        if oid is None:
            self._body()
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = repo["commits"][oid]["files"]
        if op == "preupload":
            return self._preupload(files)
        if op == "commit":
            return self._commit(repo_id, rev, query)
        if op == "paths-info":
            form = parse_qs(self._body().decode())
            wanted = form.get("paths", [])
            return self._json(200, [self._tree_entry(p, files[p]) for p in wanted if p in files])
        if op == "tree":
            prefix = sub.strip("/")
            recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
            return self._json(200, self._tree(files, prefix, recursive))

    @staticmethod
    def _tree_entry(path: str, entry: dict) -> dict:
        out = {"type": "file", "path": path, "oid": entry["blob"], "size": entry["size"]}
        if entry["lfs"]:
            out["lfs"] = {
                "oid": entry["sha256"],
                "size": entry["size"],
                "pointerSize": entry["pointer_size"],
            }
        return out

    def _tree(self, files: dict, prefix: str, recursive: bool) -> list[dict]:
        out, dirs = [], set()
        for path in sorted(files):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            parts = rest.split("/")
            for i in range(1, len(parts)):
                if not recursive and i > 1:
                    break
                dirs.add("/".join(([prefix] if prefix else []) + parts[:i]))
            if recursive or len(parts) == 1:
                out.append(self._tree_entry(path, files[path]))
        for d in sorted(dirs):
            out.append(
                {
                    "type": "directory",
                    "path": d,
                    "oid": hashlib.sha1(d.encode()).hexdigest(),
                    "size": 0,
                }
            )
        return out

    def _preupload(self, files: dict) -> None:
        payload = json.loads(self._body() or b"{}")
        self._count("preupload")
        out = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            lfs = self.server.hub.store.is_lfs(path, size)
            remote = files.get(path)
            oid = None
            if remote is not None:
                oid = remote["sha256"] if remote["lfs"] else remote["blob"]
            out.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._json(200, {"files": out, "commitOid": None})

    def _commit(self, repo_id: str, rev: str, query: dict) -> None:
        store = self.server.hub.store
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header: dict = {}
        ops: list[tuple[str, dict]] = []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
            elif key == "file":
                data = base64.b64decode(value["content"])
                sha = store.put_object(data)
                entry = store.entry(value["path"], data, sha, len(data), False)
                ops.append((key, {"path": value["path"], "entry": entry}))
            elif key == "lfsFile":
                sha, size = value["oid"], value.get("size")
                if not store.has_object(sha, size):
                    return self._error(
                        422, f"LFS object {sha} for {value['path']} was not uploaded"
                    )
                size = (store.objects / sha).stat().st_size
                ops.append(
                    (
                        key,
                        {
                            "path": value["path"],
                            "entry": store.entry(value["path"], None, sha, size, True),
                        },
                    )
                )
            elif key in ("deletedFile", "deletedFolder"):
                ops.append((key, value))
            else:
                return self._error(400, f"unknown commit operation {key}")
        create_pr = (query.get("create_pr") or ["0"])[0] == "1"
        try:
            oid, pr = store.commit(repo_id, rev, header, ops, create_pr)
        except KeyError:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        except ValueError as exc:
            return self._error(412, str(exc))
        self._count("commits")
        body = {
            "success": True,
            "commitOid": oid,
            "commitUrl": f"{self.base}/{repo_id}/commit/{oid}",
            "commitMessage": header.get("summary", ""),
        }
        if pr:
            number = pr.rsplit("/", 1)[-1]
            body["pullRequestUrl"] = f"{self.base}/{repo_id}/discussions/{number}"
        self._json(200, body)

    def _lfs_batch(self, repo_id: str) -> None:
        store = self.server.hub.store
        repo = store.load(repo_id)
        if not self._readable(repo, repo_id) or not self._authorized_write():
            return
        payload = json.loads(self._body() or b"{}")
        self._count("lfs_batch")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if not store.has_object(oid, size):
                item["actions"] = {
                    "upload": {"href": f"{self.base}/lfs-upload/{repo_id}/{oid}", "header": {}},
                    "verify": {"href": f"{self.base}/lfs-verify/{repo_id}/{oid}", "header": {}},
                }
            objects.append(item)
        self._json(
            200,
            {"transfer": "basic", "objects": objects},
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_put(self, repo_id: str, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "sha256 mismatch")
        self.server.hub.store.put_object(data)
        self._count("lfs_puts")
        self._send(200, b"", content_type="text/plain")

    def _lfs_verify(self, oid: str) -> None:
        payload = json.loads(self._body() or b"{}")
        if not self.server.hub.store.has_object(oid, payload.get("size")):
            return self._error(404, "object not found")
        self._json(200, {"success": True})

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        store = self.server.hub.store
        repo = store.load(repo_id)
        if not self._readable(repo, repo_id):
            return
        assert repo is not None
        oid = store.resolve(repo, rev)
        if oid is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        entry = repo["commits"][oid]["files"].get(path)
        if entry is None:
            return self._error(
                404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": oid}
            )
        data = b"" if self.command == "HEAD" else store.read_object(entry["sha256"])
        headers = {"X-Repo-Commit": oid, "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update(
                {
                    "ETag": f'"{entry["blob"]}"',
                    "X-Linked-Etag": f'"{entry["sha256"]}"',
                    "X-Linked-Size": str(entry["size"]),
                }
            )
        else:
            headers["ETag"] = f'"{entry["blob"]}"'
        self._send(
            200, data, headers, content_type="application/octet-stream", length=entry["size"]
        )


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: TestHub) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hub = hub
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"


class TestHub:
    """Start with `TestHub(root)`; `endpoint` for HfApi; `fail(...)` to inject faults; `counts`.

    `tokens`: the set of tokens allowed to write (and to read private repos); None = no auth.
    `lfs_threshold`: files at least this large go through LFS (weights always do)."""

    __test__ = False  # not a pytest class

    def __init__(
        self, root: Path, *, tokens: set[str] | None = None, lfs_threshold: int = 10 * 1024 * 1024
    ) -> None:
        self.store = HubStore(root, lfs_threshold)
        self.tokens = tokens
        self.faults: list[Fault] = []
        self.counts: dict[str, int] = {}
        self.request_log: list[str] = []
        self.lock = threading.Lock()
        self._server = HubServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="test-hub", daemon=True
        )
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return self._server.base_url

    def fail(
        self,
        method: str,
        path: str,
        status: int | None,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        with self.lock:
            self.faults.append(Fault(method, path, status, times, dict(headers or {})))

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)

    def repo(self, repo_id: str) -> dict[str, Any] | None:
        return self.store.load(repo_id)

    def commits_on(self, repo_id: str, branch: str = "main") -> list[str]:
        """Commit oids from the head of `branch` back to the initial one."""
        repo = self.store.load(repo_id)
        if repo is None or branch not in repo["branches"]:
            return []
        out, oid = [], repo["branches"][branch]
        while oid:
            out.append(oid)
            oid = repo["commits"][oid]["parent"]
        return out

    def files_at(self, repo_id: str, rev: str = "main") -> dict[str, dict]:
        repo = self.store.load(repo_id)
        assert repo is not None
        return repo["commits"][self.store.resolve(repo, rev)]["files"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
