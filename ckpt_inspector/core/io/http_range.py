"""Ranged reads over HTTP on fsspec's own aiohttp session, with what fsspec's file does not
check: the first request is a suffix range (size, ETag and the file's last bytes in one
answer), every later one a 206 for exactly the range asked with the first ETag required
(``If-Match``), and no body read past what was asked (a server that sends more is
refused, so a hostile one costs no more memory than the request)."""

from __future__ import annotations

import re
from typing import Any

from ckpt_inspector.core.io.remote_fs import ServerError, describe_error

TAIL = 128 << 10  # more than a zip's end record search (64 KiB + 22) and a typical directory
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class _NoRanges(Exception):
    """The server answered a range request with the whole file."""

    def __str__(self) -> str:
        return "the server does not answer byte-range requests"


def probe(fs: Any, url: str, known: tuple[int, str, tuple[int, bytes]] | None = None,
           ) -> tuple[int, str | None, tuple[int, bytes]]:
    """(size, ETag, (offset, bytes)) from one GET of the last :data:`TAIL` bytes, on
    fsspec's own HTTP session; a server that sends the whole of a large file instead is
    refused before its body is read. With ``known`` (what the disk cache holds) the GET
    is conditional, and a 304 answers ``known`` itself."""
    from fsspec.asyn import sync

    async def ask() -> tuple[int, str | None, tuple[int, bytes]]:
        kwargs = dict(fs.kwargs)
        headers = {**kwargs.pop("headers", {}), "Range": f"bytes=-{TAIL}"}
        if known:
            headers["If-None-Match"] = known[1]
        session = await fs.set_session()
        async with session.get(fs.encode_url(url), headers=headers, **kwargs) as r:
            etag = r.headers.get("ETag")
            if r.status == 304 and known:
                return known
            if r.status == 416:  # an empty file has no last bytes
                return 0, etag, (0, b"")
            if r.status == 200:
                if r.content_length is not None and r.content_length <= TAIL:
                    body = await _body(r, TAIL)
                    return len(body), etag, (0, body)
                raise _NoRanges()
            r.raise_for_status()
            m = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", "").strip())
            if m is None:
                raise _NoRanges()
            body = await _body(r, TAIL)
            start, total = int(m.group(1)), int(m.group(3))
            if len(body) != int(m.group(2)) - start + 1:
                raise ConnectionError("the connection dropped in the middle of an answer")
            return total, etag, (start, body)

    try:
        return sync(fs.loop, ask)
    except _NoRanges as err:
        raise ServerError(describe_error(err, url)) from None


async def _body(r: Any, limit: int) -> bytes:
    """An answer's body, refused past ``limit`` bytes: a server that sends more than was
    asked (a hostile or broken one) costs no more memory than the request."""
    out = bytearray()
    while True:
        piece = await r.content.read(min(1 << 20, limit + 1 - len(out)))
        if not piece:
            return bytes(out)
        out += piece
        if len(out) > limit:
            raise ConnectionError("the server sent more bytes than were asked for")


def get_range(fs: Any, url: str, start: int, end: int, etag: str | None) -> bytes:
    """The bytes ``[start, end)`` in one GET on fsspec's HTTP session: a 206 for exactly
    that range (anything else is refused before its body is read), at most ``end - start``
    bytes read, the ETag of the first answer required (``If-Match``: a change is a 412)."""
    from fsspec.asyn import sync

    async def get() -> bytes:
        kwargs = dict(fs.kwargs)
        headers = {**kwargs.pop("headers", {}), "Range": f"bytes={start}-{end - 1}"}
        if etag:
            headers["If-Match"] = etag
        session = await fs.set_session()
        async with session.get(fs.encode_url(url), headers=headers, **kwargs) as r:
            r.raise_for_status()
            m = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", "").strip())
            if r.status != 206 or m is None or int(m.group(1)) != start:
                raise _NoRanges()
            return await _body(r, end - start)

    return sync(fs.loop, get)


