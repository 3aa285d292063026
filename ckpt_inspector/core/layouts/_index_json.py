"""An index's JSON parsed in pieces, so that a worker parsing it does not freeze the window.

One ``orjson.loads`` of a 70 MB index (a million names) holds Python's lock for about half
a second: the window's thread, which needs the lock for every event it handles, waits that
long. :func:`loads` parses such an index's ``weight_map`` a few megabytes at a time (the
lock is free between pieces) and the rest of the document with the map left out.

The pieces are cut where the file already has a newline after a comma: in JSON, between two
members of the map (a string holds no raw newline; a cut inside a nested value leaves a
piece that does not parse). The result is the one a
single parse gives, or the document is parsed in one go: every piece but the last must end
with that comma and parse as an object of its own, and the rest of the document, the map
replaced by a token found nowhere in the file, must parse with the token as its top-level
``weight_map``; every value must be a string (a file's name), and the map must not end with
a comma. Duplicate names keep the last, as in one parse.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson

PIECES_FROM = 8 << 20  # smaller documents are parsed in one go (tens of milliseconds)
PIECE = 2 << 20

_NAME = b'"weight_map"'
_MAP = re.compile(rb'"weight_map"\s*:\s*\{')
_CUT = re.compile(rb",[ \t\r]*\n")  # a comma that ends a line: between two members


def loads(raw: bytes) -> Any:
    """``orjson.loads(raw)``, in pieces where the document is large; raises what orjson
    raises on a document it refuses."""
    if len(raw) >= PIECES_FROM:
        parsed = _in_pieces(raw)
        if parsed is not None:
            return parsed
    return orjson.loads(raw)


def _find(raw: bytes, needle: bytes, start: int) -> int:
    """``raw.find(needle, start)`` a few megabytes at a time (one find over 70 MB holds the
    lock for 50 ms or more)."""
    size = len(raw)
    while start < size:
        at = raw.find(needle, start, min(start + PIECE + len(needle) - 1, size))
        if at >= 0:
            return at
        start += PIECE
    return -1


def _in_pieces(raw: bytes) -> dict[str, Any] | None:
    first = _find(raw, _NAME, 0)
    if first < 0 or _find(raw, _NAME, first + 1) >= 0:  # none, or more than one
        return None
    m = _MAP.match(raw, first)
    if m is None:
        return None
    start = m.end()  # just after the map's "{"
    # the map's "}" if it is the document's last member (transformers writes it last): the
    # last "}" before the document's own, found from the end (a scan of the whole file
    # would hold the lock too); if the map ends elsewhere, a piece will not parse
    end = raw.rfind(b"}", start, len(raw.rstrip()) - 1)
    if end < 0:
        return None
    token = "ckpt-inspector:" + secrets.token_hex(16)
    try:
        rest = orjson.loads(raw[:first] + b'"weight_map": "' + token.encode() + b'"'
                            + raw[end + 1:])
        if not isinstance(rest, dict) or rest.get("weight_map") != token:
            return None
        weight_map: dict[str, Any] = {}
        at = start
        cut = None
        while at < end:
            cut = _CUT.search(raw, min(at + PIECE, end), end) if at + PIECE < end else None
            stop = cut.start() if cut else end  # at the comma, or the map's end
            piece = raw[at:stop]
            if not piece.strip():
                return None  # no member between two commas: the document is not JSON
            part = orjson.loads(b"{" + piece + b"}")
            # names of files only: a nested value would sit one level shallower in its
            # piece than in the document (orjson's depth limit), and no index has one
            if set(map(type, part.values())) - {str}:
                return None
            weight_map.update(part)
            at = cut.end() if cut else end
        if cut is not None:
            return None  # the last member ends with a comma: "...,}" is not JSON
    except orjson.JSONDecodeError:
        return None
    rest["weight_map"] = weight_map
    return rest
