"""A loopback HTTP/1.1 file server with Range support, a request log and fault modes.

The remote tests point fsspec (or urllib) at ``RangeServer.url(name)`` and assert budgets
from the log: how many requests, of which kind, and how many body bytes were sent. It binds
127.0.0.1 only. Names are paths relative to the served folder (sub-folders allowed), the
same strings that ``url()``, the log and the fault-mode dicts use.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self, cast
from urllib.parse import quote, unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_FLIP = bytes(b ^ 0xFF for b in range(256))


@dataclass(frozen=True)
class Request:
    """One logged request: ``sent`` counts body bytes only (0 for HEAD and most errors)."""

    method: str
    path: str
    range: str | None
    status: int
    sent: int
    port: int  # the client's port: one per connection, so keep-alive reuse shows in the log


@dataclass
class _Entry:
    """What one name serves now: bytes in memory, or a file on disk read per request."""

    size: int
    etag: str
    mtime: float
    data: bytes | None = None
    file: Path | None = None

    def read(self, start: int, n: int) -> bytes:
        if self.data is not None:
            return self.data[start : start + n]
        assert self.file is not None
        with self.file.open("rb") as f:
            f.seek(start)
            return f.read(n)


class Bound(ThreadingHTTPServer):
    """A threaded HTTP server on a free port of 127.0.0.1, serving for ``owner`` (a fake
    whose handler reads its state as ``self.server.owner``)."""

    daemon_threads = True

    def __init__(self, owner: object, handler: type[BaseHTTPRequestHandler]) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), handler)


class LoopbackServer:
    """Start and stop of the tests' fake servers (``with`` does both): ``handler`` answers
    the requests; ``port`` is where it listens."""

    handler: type[BaseHTTPRequestHandler]
    _httpd: Bound | None = None

    def start(self) -> Self:
        self._httpd = Bound(self, self.handler)
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not started"
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class RangeServer(LoopbackServer):
    """Serves a folder (files read on each request) or a ``{name: bytes}`` dict.

    Fault modes (attributes, changeable while running; "per path" = a collection of names):

    - ``ignore_range``: True or names. Simulates a server without range support: every GET
      answers 200 with the whole file, and no ``Accept-Ranges`` header.
    - ``fail_first``: ``{name: [status, ...]}``. Simulates transient or permanent errors
      (500/503 then success, 401/403 missing credentials, 404 not yet there): the next requests
      for that name get those statuses in order (consumed), then it is served normally.
    - ``change_after``: ``{name: n}``. Simulates a file replaced while being read: once n
      more requests (HEAD or GET) for it have been answered, its bytes are inverted (XOR 0xFF),
      its ETag and Last-Modified change, and ``change_grow`` zero bytes are appended (a size
      change). It changes once (the key is removed); ``put()`` changes a file by hand.
    - ``drop_after_bytes``: an int or ``{name: int}``. Simulates a dropped connection: a GET
      sends its headers (full ``Content-Length``), then that many body bytes, then closes.
    """

    def __init__(
        self,
        files: str | Path | Mapping[str, bytes],
        *,
        ignore_range: bool | Collection[str] = False,
        fail_first: Mapping[str, list[int]] | None = None,
        change_after: Mapping[str, int] | None = None,
        change_grow: int = 0,
        drop_after_bytes: int | Mapping[str, int] | None = None,
    ) -> None:
        self.root = None if isinstance(files, Mapping) else Path(files).resolve()
        self.ignore_range = ignore_range
        self.fail_first = {k: list(v) for k, v in (fail_first or {}).items()}
        self.change_after = dict(change_after or {})
        self.change_grow = change_grow
        self.drop_after_bytes = drop_after_bytes
        self._lock = threading.Lock()
        self._log: list[Request] = []
        self._entries: dict[str, _Entry] = {}
        for name, data in (files.items() if isinstance(files, Mapping) else ()):
            self.put(name, data)
        self._httpd = None

    def url(self, name: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{quote(name)}"

    # -- content ---------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> None:
        """Serve ``data`` under ``name`` from now on (a new ETag and Last-Modified)."""
        with self._lock:
            old = self._entries.get(name)
            mtime = max(time.time(), old.mtime + 1 if old else 0)
            etag = '"' + hashlib.sha1(data).hexdigest() + '"'
            self._entries[name] = _Entry(len(data), etag, mtime, data=bytes(data))

    def _entry(self, name: str) -> _Entry | None:
        with self._lock:
            if name in self._entries:
                return self._entries[name]
        if self.root is None or not name:
            return None
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        st = path.stat()
        return _Entry(st.st_size, f'"{st.st_size:x}-{st.st_mtime_ns:x}"', st.st_mtime, file=path)

    def listing(self, folder: str) -> list[dict[str, object]]:
        """``[{"name", "size"}]`` of every file under ``folder`` (recursive, sorted)."""
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        with self._lock:
            sizes = {n: e.size for n, e in self._entries.items()}
        if self.root is not None and (self.root / prefix).resolve().is_relative_to(self.root):
            for p in (self.root / prefix).rglob("*"):
                if p.is_file():
                    sizes.setdefault(p.relative_to(self.root).as_posix(), p.stat().st_size)
        return [{"name": n, "size": s} for n, s in sorted(sizes.items()) if n.startswith(prefix)]

    # -- log -------------------------------------------------------------------------------
    def requests(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self._log if path is None or r.path == path]

    def bytes_sent(self, path: str | None = None) -> int:
        return sum(r.sent for r in self.requests(path))

    def clear(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, req: Request, replace: Request | None = None) -> None:
        with self._lock:
            if replace is None:
                self._log.append(req)
            else:
                self._log[self._log.index(replace)] = req

    def _after_serving(self, name: str) -> None:
        """Counts down ``change_after[name]``; at zero the file changes (once)."""
        with self._lock:
            left = self.change_after.get(name)
            if left is None:
                return
            self.change_after[name] = left - 1
            if left > 1:
                return
            del self.change_after[name]
        entry = self._entry(name)
        if entry is not None:
            flipped = entry.read(0, entry.size).translate(_FLIP)
            self.put(name, flipped + bytes(self.change_grow))

    def _fault(self, name: str) -> int | None:
        with self._lock:
            statuses = self.fail_first.get(name)
            return statuses.pop(0) if statuses else None

    def _per_path(self, value: bool | int | Collection[str] | Mapping[str, int] | None,
                  name: str) -> bool | int | None:
        if isinstance(value, Mapping):
            return value.get(name)
        if isinstance(value, (bool, int)) or value is None:
            return value
        return name in value


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """``(start, end_inclusive)``; None when absent or ignored (invalid, multi-range); False
    when unsatisfiable (416)."""
    m = _RANGE.fullmatch(header.strip()) if header else None
    if m is None or m.group(1) == m.group(2) == "":
        return None
    a, b = m.group(1), m.group(2)
    if a == "":  # suffix: the last n bytes
        n = int(b)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else False
    start, end = int(a), int(b) if b else None
    if end is not None and end < start:
        return None
    return (start, size - 1 if end is None else min(end, size - 1)) if start < size else False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections end on their own

    @property
    def rs(self) -> RangeServer:
        return cast(RangeServer, cast(Bound, self.server).owner)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:  # the client hung up between requests
            self.close_connection = True

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        """Logs, then answers: the record is in the log before the client has the answer."""
        rs, name = self.rs, unquote(urlsplit(self.path).path).lstrip("/")
        status, headers, content = self._answer(name, self.headers.get("Range"))
        length = int(headers["Content-Length"])
        drop = rs._per_path(rs.drop_after_bytes, name) if isinstance(content, tuple) else None
        limit = 0 if not body else length if drop is None else min(int(drop), length)
        record = Request(self.command, name, self.headers.get("Range"), status, limit,
                         self.client_address[1])
        rs._record(record)
        if status < 300:
            rs._after_serving(name)  # a change shows in the next request, not in this one
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        sent = self._write(content, limit)
        if sent != limit:
            rs._record(replace(record, sent=sent), replace=record)
        if sent < length and body:  # dropped: the client sees a short body, then EOF
            self.close_connection = True

    def _write(self, content: bytes | tuple[_Entry, int], limit: int) -> int:
        sent = 0
        while sent < limit:
            if isinstance(content, tuple):
                chunk = content[0].read(content[1] + sent, min(1 << 20, limit - sent))
            else:
                chunk = content[sent:limit]
            try:
                self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):  # the client hung up
                break
            sent += len(chunk)
            if not chunk:
                break
        return sent

    def _answer(
        self, name: str, rng: str | None
    ) -> tuple[int, dict[str, str], bytes | tuple[_Entry, int]]:
        """The status, headers and body (bytes, or a file's entry and start offset)."""
        rs = self.rs
        if name == "_list" or name.startswith("_list/"):
            data = json.dumps(rs.listing(name[len("_list") :])).encode()
            return 200, {"Content-Type": "application/json", "Content-Length": str(len(data))}, data
        fault = rs._fault(name)
        entry = None if fault else rs._entry(name)
        if fault or entry is None:
            msg = f"{fault or 404} {name}\n".encode()
            return fault or 404, {"Content-Length": str(len(msg))}, msg
        headers = {"ETag": entry.etag, "Last-Modified": formatdate(entry.mtime, usegmt=True),
                   "Content-Type": "application/octet-stream", "Content-Length": "0"}
        ranged = not rs._per_path(rs.ignore_range, name)
        if ranged:
            headers["Accept-Ranges"] = "bytes"
        if self.headers.get("If-None-Match") == entry.etag:
            return 304, headers, b""
        match = self.headers.get("If-Match")
        if match is not None and match not in ("*", entry.etag):  # RFC 9110 13.1.1
            msg = b"412 the ETag does not match\n"
            return 412, {"ETag": entry.etag, "Content-Length": str(len(msg))}, msg
        span = parse_range(rng, entry.size) if ranged else None
        if span is False:
            return 416, headers | {"Content-Range": f"bytes */{entry.size}"}, b""
        start, end = span or (0, entry.size - 1)
        if span:
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        headers["Content-Length"] = str(end - start + 1)
        return (206 if span else 200), headers, (entry, start)


RangeServer.handler = _Handler
