"""A fake Hugging Face Hub on 127.0.0.1: the few routes ``huggingface_hub`` (``HfApi``,
``HfFileSystem``, ``get_hf_file_metadata``) uses to resolve a revision, list and describe
paths, and read a file by byte range. Point the library at it with ``HF_ENDPOINT`` (a child
process) or ``huggingface_hub.constants.ENDPOINT`` (this process; see ``hub_env``).

Routes (``{kind}`` is ``models``, ``datasets`` or ``spaces``; a dataset's or space's file
routes carry the ``datasets/`` or ``spaces/`` prefix):

- ``GET /api/{kind}/{repo}[/revision/{rev}]``: the repository's info (``sha``, ``siblings``).
- ``GET /api/{kind}/{repo}/tree/{rev}[/{path}]?recursive=&expand=&cursor=``: a listing, in
  pages of ``page_size`` entries with a ``Link: <…>; rel="next"`` header.
- ``POST /api/{kind}/{repo}/paths-info/{rev}`` (form or JSON ``paths``): entries by path.
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: the file, with ``Range``, ``ETag``,
  ``X-Repo-Commit``, ``X-Linked-Size`` and ``X-Linked-Etag``; with ``cdn=True`` an LFS file
  is a 302 (with those headers) to ``GET /cdn/{sha256}``, as the Hub redirects to its CDN.
- ``GET /api/agent-harnesses``: asked once a day by ``huggingface_hub`` itself (left out of
  ``requests()``).

A revision is ``main`` or the commit sha (40 hex digits). A repository that does not exist
answers 404 ``RepoNotFound``; a private one 401 ``RepoNotFound`` unless the request carries
``Authorization: Bearer <token>`` (the Hub answers the same 401 for both without a token; the
fake says 404 for a missing one so the two cases can be told apart). Every request is logged
(method, path, range, status, body bytes, whether it carried the right token); the token is
never logged.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

from rangeserver import Bound, LoopbackServer, parse_range

KINDS = {"models": "", "datasets": "datasets/", "spaces": "spaces/"}


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str  # without the query
    range: str | None
    status: int
    sent: int
    authorized: bool


@dataclass
class Repo:
    files: dict[str, bytes]
    private: bool = False
    kind: str = "models"
    sha: str = ""
    lfs: set[str] = field(default_factory=set)  # paths served as LFS files (with an lfs entry)
    _hashes: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        h = hashlib.sha1()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        self.sha = self.sha or h.hexdigest()

    def entry(self, path: str, expand: bool = False) -> dict[str, Any] | None:
        if path in self.files:
            data = self.files[path]
            out: dict[str, Any] = {"type": "file", "path": path, "size": len(data),
                                   "oid": self._hash("blob", path)}
            if path in self.lfs:
                out["lfs"] = {"oid": self._hash("sha256", path), "size": len(data),
                              "pointerSize": 134}
            if expand:
                out["lastCommit"] = {"id": self.sha, "title": "add", "date": "2024-01-01T00:00:00Z"}
            return out
        if path == "" or any(n.startswith(path + "/") for n in self.files):
            return {"type": "directory", "path": path, "size": 0,
                    "oid": hashlib.sha1(path.encode()).hexdigest()}
        return None

    def children(self, folder: str, recursive: bool) -> list[str]:
        prefix = folder + "/" if folder else ""
        seen: dict[str, None] = {}
        for name in sorted(self.files):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for i in range(1, len(parts) + 1 if recursive else 2):
                seen[prefix + "/".join(parts[:i])] = None
        return list(seen)  # folders first-seen order, as a tree walk lists them

    def etag(self, path: str) -> str:
        return self._hash("sha256" if path in self.lfs else "blob", path)

    def _hash(self, kind: str, path: str) -> str:
        """A file's sha256, or its git blob sha1, kept as the Hub keeps them (not worked out
        again per request: the benchmark's files are hundreds of MB); a file a test
        replaces is hashed anew."""
        data = self.files[path]
        kept = self._hashes.get((kind, path))
        if kept is None or kept[0] is not data:
            digest = (hashlib.sha256(data).hexdigest() if kind == "sha256"
                      else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
            kept = self._hashes[(kind, path)] = (data, digest)
        return kept[1]


class FakeHub(LoopbackServer):
    """``FakeHub({"owner/name": Repo({...})}, token="hf_x")``; ``with`` starts and stops it."""

    def __init__(self, repos: dict[str, Repo], token: str = "hf_fake_token_0123",
                 page_size: int = 1000, cdn: bool = False, latency: float = 0.0):
        self.repos = repos
        self.latency = latency  # seconds each answer waits, as a round trip over a network
        self.cdn = cdn  # LFS files answered with a 302 to /cdn/…, as the Hub does
        self.token = token
        self.page_size = page_size
        self.blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._log: list[HubRequest] = []
        self._httpd = None

    def requests(self, contains: str = "") -> list[HubRequest]:
        """The requests logged whose path contains ``contains``, but the library's own daily
        ``/api/agent-harnesses`` (not a request for a repository)."""
        with self._lock:
            return [r for r in self._log
                    if contains in r.path and r.path != "/api/agent-harnesses"]

    def bytes_sent(self) -> int:
        return sum(r.sent for r in self.requests())

    def clear(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, r: HubRequest) -> None:
        with self._lock:
            self._log.append(r)


class _Answer(Exception):
    """An error answer: status, Hub error code, message."""

    def __init__(self, status: int, code: str | None = None, message: str | None = None):
        self.status, self.code, self.message = status, code, message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60

    @property
    def hub(self) -> FakeHub:
        return cast(FakeHub, cast(Bound, self.server).owner)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_POST(self) -> None:
        self._serve(body=True)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _serve(self, body: bool) -> None:
        if self.hub.latency:  # a network's round trip, before the answer (each on its thread)
            time.sleep(self.hub.latency)
        split = urlsplit(self.path)
        path, query = unquote(split.path), parse_qs(split.query)
        payload = b""
        if self.command == "POST":
            payload = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            status, headers, content = self._route(path, query, payload)
        except _Answer as err:
            content = f"{err.status} {err.message or err.code or ''}\n".encode()
            status, headers = err.status, {"Content-Type": "text/plain"}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.message:
                headers["X-Error-Message"] = err.message
        headers["Content-Length"] = str(len(content))
        sent = len(content) if body else 0
        self.hub._record(HubRequest(self.command, path, self.headers.get("Range"), status, sent,
                                    self._authorized()))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(content)

    def _repo(self, repo_id: str, kind: str, rev: str | None) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None or repo.kind != kind:
            raise _Answer(404, "RepoNotFound", "Repository not found")
        if repo.private and not self._authorized():
            if self.headers.get("Authorization"):
                raise _Answer(401, None, "Invalid credentials in Authorization header")
            raise _Answer(401, "RepoNotFound", "Invalid username or password.")
        if rev not in (None, "main", repo.sha):
            raise _Answer(404, "RevisionNotFound", "Invalid rev id: " + rev)
        return repo

    def _route(self, path: str, query: dict[str, list[str]],
               payload: bytes) -> tuple[int, dict[str, str], bytes]:
        parts = path.strip("/").split("/")
        if path == "/api/agent-harnesses":  # huggingface_hub asks once a day (user agent)
            return _json({"standardEnvVars": [], "harnesses": {}})
        if parts[0] == "api" and len(parts) >= 4 and parts[1] in KINDS:
            return self._api(parts[1], "/".join(parts[2:4]), parts[4:], query, payload)
        kind = next((k for k, p in KINDS.items() if p and path.startswith("/" + p)), "models")
        if kind != "models":
            parts = parts[1:]
        if parts[0] == "cdn" and len(parts) == 2:
            return self._cdn(parts[1])
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(kind, "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        raise _Answer(404, None, "no such route")

    def _api(self, kind: str, repo_id: str, rest: list[str], query: dict[str, list[str]],
             payload: bytes) -> tuple[int, dict[str, str], bytes]:
        expand = query.get("expand", ["False"])[0].lower() == "true"
        if not rest or rest[0] == "revision":
            repo = self._repo(repo_id, kind, rest[1] if len(rest) > 1 else None)
            info = {"id": repo_id, "_id": repo.sha[:24], "sha": repo.sha, "private": repo.private,
                    "siblings": [{"rfilename": n} for n in sorted(repo.files)],
                    "lastModified": "2024-01-01T00:00:00.000Z", "tags": [], "downloads": 0,
                    "likes": 0}
            return _json(info)
        if rest[0] == "tree" and len(rest) >= 2:
            repo = self._repo(repo_id, kind, rest[1])
            folder = "/".join(rest[2:])
            if folder and (repo.entry(folder) or {}).get("type") != "directory":
                raise _Answer(404, "EntryNotFound", f"{folder} does not exist")
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            names = repo.children(folder, recursive)
            size = min(self.hub.page_size, 50) if expand else self.hub.page_size
            start = int(query.get("cursor", ["0"])[0])
            page = [repo.entry(n, expand) for n in names[start:start + size]]
            headers = {}
            if start + size < len(names):
                q = f"recursive={recursive}&expand={expand}&cursor={start + size}"
                base = f"{self.hub.endpoint}/api/{kind}/{repo_id}/tree/{rest[1]}"
                headers["Link"] = f'<{base}{"/" + quote(folder) if folder else ""}?{q}>; rel="next"'
            return _json(page, headers)
        if rest[0] == "paths-info" and len(rest) == 2:
            repo = self._repo(repo_id, kind, rest[1])
            try:
                asked = json.loads(payload)
                paths, expand = asked.get("paths", []), bool(asked.get("expand"))
            except ValueError:
                form = parse_qs(payload.decode())
                paths = form.get("paths", [])
                expand = form.get("expand", ["False"])[0].lower() == "true"
            found = [repo.entry(p.strip("/"), expand) for p in paths]
            return _json([e for e in found if e is not None])
        raise _Answer(404, None, "no such route")

    def _resolve(self, kind: str, repo_id: str, rev: str,
                 name: str) -> tuple[int, dict[str, str], bytes]:
        repo = self._repo(repo_id, kind, rev)
        if name not in repo.files:
            raise _Answer(404, "EntryNotFound", f"{name} does not exist")
        data = repo.files[name]
        etag = f'"{repo.etag(name)}"'
        headers = {"ETag": etag, "X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if name in repo.lfs:
            headers |= {"X-Linked-Size": str(len(data)), "X-Linked-Etag": etag}
            if self.hub.cdn:  # the redirect carries the Hub's headers, the CDN the bytes
                oid = repo.etag(name)
                self.hub.blobs[oid] = data
                return 302, headers | {"Location": f"{self.hub.endpoint}/cdn/{oid}"}, b""
        return self._bytes(data, headers)

    def _cdn(self, oid: str) -> tuple[int, dict[str, str], bytes]:
        if oid not in self.hub.blobs:
            raise _Answer(404, None, "no such blob")
        data = self.hub.blobs[oid]
        return self._bytes(data, {"ETag": f'"cdn-{oid[:16]}"', "Accept-Ranges": "bytes"})

    def _bytes(self, data: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        span = parse_range(self.headers.get("Range"), len(data))
        if span is False:
            return 416, headers | {"Content-Range": f"bytes */{len(data)}"}, b""
        if span is None:
            return 200, headers, data
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return 206, headers, data[start:end + 1]


def _json(value: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json", **(headers or {})}, json.dumps(value).encode()


FakeHub.handler = _Handler
