"""A fake Google Cloud Storage on 127.0.0.1: the few routes of the GCS JSON API that
``gcsfs`` uses to describe an object, list a bucket or prefix, and download an object by
byte range. Point gcsfs at it with ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` (gcsfs
then speaks plain HTTP to it) and anonymous credentials (``FSSPEC_GCS_TOKEN=anon``, or what
``ckpt_inspector`` picks by itself under an emulator).

Routes (``{object}`` is percent-encoded, ``/`` as ``%2F``):

- ``GET /storage/v1/b/{bucket}``: the bucket's resource.
- ``GET /storage/v1/b/{bucket}/o/{object}``: the object's resource (``size``, ``etag``,
  ``generation``, ``md5Hash``, ``crc32c``, ``updated``...).
- ``GET /storage/v1/b/{bucket}/o?prefix=&delimiter=&maxResults=&pageToken=``: a listing
  (``items``, ``prefixes``), in pages of ``page_size`` with ``nextPageToken``.
- ``GET /download/storage/v1/b/{bucket}/o/{object}?alt=media[&generation=]``: the bytes,
  with ``Range`` (206) or whole (200); a ``generation`` that is not the current one is 404.

Objects are put with :meth:`FakeGCS.put` (each put is a new generation). Faults:
``fail_first = {"bucket/object": [status, ...]}`` answers those statuses first, on the
routes naming that object (a listing's key is the bucket); ``denied = {"bucket"}`` answers
403 to everything in those buckets, as GCS does to a caller its IAM policy leaves out
(gcsfs answers a 403 on one object by listing the bucket instead). Every request is logged.

gcsfs's ``info`` asks for the object and lists ``object/`` at the same time (is it a
folder?); when that listing comes back first and empty, it asks for the object again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from rangeserver import Bound, LoopbackServer, parse_range

_REASONS = {403: "Forbidden", 404: "Not Found", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass(frozen=True)
class GCSRequest:
    method: str
    route: str  # "object", "list", "media", "bucket", "denied" or "other"
    name: str  # "bucket/object" ("bucket" for a listing or the bucket)
    query: dict[str, str]
    range: str | None
    status: int
    sent: int  # body bytes


@dataclass
class _Object:
    data: bytes
    generation: int
    updated: float

    def resource(self, bucket: str, name: str) -> dict[str, Any]:
        md5 = base64.b64encode(hashlib.md5(self.data).digest()).decode()
        crc = base64.b64encode(zlib.crc32(self.data).to_bytes(4, "big")).decode()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self.updated))
        return {"kind": "storage#object", "id": f"{bucket}/{name}/{self.generation}",
                "name": name, "bucket": bucket, "generation": str(self.generation),
                "metageneration": "1", "contentType": "application/octet-stream",
                "storageClass": "STANDARD", "size": str(len(self.data)), "md5Hash": md5,
                "crc32c": crc, "etag": f"CK{self.generation}EAE=", "timeCreated": stamp,
                "updated": stamp}


class FakeGCS(LoopbackServer):
    def __init__(self, page_size: int = 1000) -> None:
        self.page_size = page_size
        self.fail_first: dict[str, list[int]] = {}
        self.denied: set[str] = set()
        self._buckets: dict[str, dict[str, _Object]] = {}
        self._lock = threading.Lock()
        self._log: list[GCSRequest] = []
        self._generation = 1_700_000_000_000_000
        self._httpd = None

    # -- content ---------------------------------------------------------------------------
    def put(self, bucket: str, name: str, data: bytes) -> None:
        """Serve ``data`` as ``gs://bucket/name`` from now on (a new generation)."""
        with self._lock:
            self._generation += 1
            self._buckets.setdefault(bucket, {})[name] = _Object(
                bytes(data), self._generation, time.time())

    def make_bucket(self, bucket: str) -> None:
        with self._lock:
            self._buckets.setdefault(bucket, {})

    # -- log -------------------------------------------------------------------------------
    def requests(self, name: str | None = None, route: str | None = None) -> list[GCSRequest]:
        """The log, of one object (``bucket/object``) or listing (``bucket``) and route."""
        with self._lock:
            return [r for r in self._log if (name is None or r.name == name)
                    and (route is None or r.route == route)]

    def bytes_sent(self, name: str | None = None) -> int:
        return sum(r.sent for r in self.requests(name))

    def clear(self) -> None:
        with self._lock:
            self._log.clear()

    # -- answers ---------------------------------------------------------------------------
    def _object(self, bucket: str, name: str) -> _Object | None:
        with self._lock:
            return self._buckets.get(bucket, {}).get(name)

    def _fault(self, name: str) -> int | None:
        with self._lock:
            statuses = self.fail_first.get(name)
            return statuses.pop(0) if statuses else None

    def _listing(self, bucket: str, q: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            objects = dict(self._buckets[bucket])
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        limit = min(int(q.get("maxResults") or self.page_size), self.page_size)
        entries: list[tuple[str, _Object | None]] = []  # sorted names; None: a prefix
        for name in sorted(objects):
            if not name.startswith(prefix):
                continue
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            entry = (name[: cut + len(delimiter)], None) if cut >= 0 else (name, objects[name])
            if not entries or entries[-1][0] != entry[0]:
                entries.append(entry)
        start = int(q.get("pageToken") or 0)
        page = entries[start : start + limit]
        out: dict[str, Any] = {"kind": "storage#objects"}
        items = [o.resource(bucket, n) for n, o in page if o is not None]
        prefixes = [n for n, o in page if o is None]
        if items:
            out["items"] = items
        if prefixes:
            out["prefixes"] = prefixes
        if start + limit < len(entries):
            out["nextPageToken"] = str(start + limit)
        return out

    def answer(self, path: str, query: dict[str, str], range_: str | None,
               ) -> tuple[str, str, int, dict[str, str], bytes]:
        """(route, name, status, headers, body) of one GET."""
        parts = path.split("/")
        media = path.startswith("/download/storage/v1/b/")
        if media:
            parts = parts[1:]
        # ['', 'storage', 'v1', 'b', bucket, ('o', (object))]
        if len(parts) < 5 or parts[1:4] != ["storage", "v1", "b"]:
            return "other", path, *_error(404, "no such route")
        bucket = unquote(parts[4])
        if bucket in self.denied:
            return "denied", bucket, *_error(
                403, "anonymous caller does not have storage.objects.get access")
        if len(parts) == 5:
            if bucket not in self._buckets:
                return "bucket", bucket, *_error(404, "The specified bucket does not exist.")
            return "bucket", bucket, 200, *_json({"kind": "storage#bucket", "name": bucket,
                                                   "id": bucket, "location": "US"})
        if parts[5] != "o":
            return "other", path, *_error(404, "no such route")
        if len(parts) == 6 or parts[6] == "":
            fault = self._fault(bucket)
            if fault:
                return "list", bucket, *_error(fault, _REASONS.get(fault, "error"))
            if bucket not in self._buckets:
                return "list", bucket, *_error(404, "The specified bucket does not exist.")
            return "list", bucket, 200, *_json(self._listing(bucket, query))
        key = unquote("/".join(parts[6:]))
        name, route = f"{bucket}/{key}", "media" if media else "object"
        fault = self._fault(name)
        if fault:
            return route, name, *_error(fault, _REASONS.get(fault, "error"))
        obj = self._object(bucket, key)
        if obj is None or ("generation" in query and query["generation"] != str(obj.generation)):
            return route, name, *_error(404, "No such object: " + name)
        if not media:
            return route, name, 200, *_json(obj.resource(bucket, key))
        headers = {"Content-Type": "application/octet-stream",
                   "X-Goog-Generation": str(obj.generation), "ETag": f"CK{obj.generation}EAE="}
        span = parse_range(range_, len(obj.data))
        if span is False:
            return route, name, *_error(416, "The requested range cannot be satisfied.")
        if span is None:
            return route, name, 200, headers, obj.data
        start, end = cast(tuple[int, int], span)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(obj.data)}"
        return route, name, 206, headers, obj.data[start : end + 1]


def _json(doc: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    return {"Content-Type": "application/json; charset=UTF-8"}, json.dumps(doc).encode()


def _error(status: int, message: str) -> tuple[int, dict[str, str], bytes]:
    doc = {"error": {"code": status, "message": message,
                     "errors": [{"message": message, "domain": "global",
                                 "reason": _REASONS.get(status, "error")}]}}
    return status, *_json(doc)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:
            self.close_connection = True

    def do_GET(self) -> None:
        fake = cast(FakeGCS, cast(Bound, self.server).owner)
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        range_ = self.headers.get("Range")
        route, name, status, headers, body = fake.answer(split.path, query, range_)
        with fake._lock:
            fake._log.append(GCSRequest("GET", route, name, query, range_, status, len(body)))
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self) -> None:
        fake = cast(FakeGCS, cast(Bound, self.server).owner)
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, headers, body = _error(405, "the fake only reads")
        with fake._lock:
            fake._log.append(GCSRequest(self.command, "other", self.path, {}, None, 405, 0))
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _refuse


FakeGCS.handler = _Handler
