"""Just enough of the protobuf wire format to walk an ONNX model without loading it.

Fields are yielded with the position of their payload, so large ``bytes``
fields (tensor data) are never copied: the ONNX reader keeps their offsets.

Walking is bounded: a :class:`Budget` caps the fields one reader visits (a
model of a hundred million tiny fields would otherwise take minutes), packed
varints are decoded only up to a count the caller names, and text is cut at
:data:`MAX_TEXT` bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ckpt_inspector.core.errors import CheckpointError

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
MAX_TEXT = 64 << 10  # longer strings (names, doc strings) are cut, with an ellipsis


class Budget:
    """How many more fields a reader may visit before the file is refused."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int):
        self.limit = limit
        self.left = limit

    def exceeded(self) -> CheckpointError:
        return CheckpointError(f"more than {self.limit:,} protobuf fields: refused (a model "
                               "that large would take minutes to walk)")


def read_varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise CheckpointError("malformed protobuf: bad varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & ((1 << 64) - 1), pos
        shift += 7


def fields(buf: Any, start: int, end: int,
           budget: Budget | None = None) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)``: an int for varints, ``(begin, end)`` otherwise.

    One-byte keys and varints (nearly all of them) are read inline: this loop is what
    walking a large model costs."""
    pos = start
    while pos < end:
        if budget is not None:
            budget.left -= 1
            if budget.left < 0:
                raise budget.exceeded()
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CheckpointError("malformed protobuf: field number 0")
        if wire in (VARINT, LEN):
            if pos < end and buf[pos] < 0x80:
                value = buf[pos]
                pos += 1
            else:
                value, pos = read_varint(buf, pos, end)
            if wire == VARINT:
                yield number, wire, value
                continue
            if pos + value > end:
                raise CheckpointError("malformed protobuf: field runs past its message")
            yield number, wire, (pos, pos + value)
            pos += value
        elif wire == FIXED64:
            if pos + 8 > end:
                raise CheckpointError("malformed protobuf: truncated fixed64")
            yield number, wire, (pos, pos + 8)
            pos += 8
        elif wire == FIXED32:
            if pos + 4 > end:
                raise CheckpointError("malformed protobuf: truncated fixed32")
            yield number, wire, (pos, pos + 4)
            pos += 4
        else:
            raise CheckpointError(f"malformed protobuf: wire type {wire}")


def decode_packed_varints(raw: Any, limit: int | None = None) -> list[int] | None:
    """The varints packed in ``raw``; None when there are more than ``limit`` of them
    (decided before decoding: a varint takes at least one byte)."""
    end = len(raw)
    if limit is not None and end > limit and _count_varints(raw) > limit:
        return None
    out = []
    pos = 0
    while pos < end:
        value, pos = read_varint(raw, pos, end)
        out.append(value)
    return out


_HIGH = bytes(range(0x80, 0x100))


def _count_varints(raw: Any) -> int:
    """Varints in a packed run: each ends with the one byte below 0x80."""
    count = 0
    for at in range(0, len(raw), 1 << 20):
        count += len(bytes(raw[at:at + (1 << 20)]).translate(None, _HIGH))
    return count


def text(buf: Any, span: tuple[int, int], limit: int = MAX_TEXT) -> str:
    if not isinstance(span, tuple):
        raise CheckpointError("malformed protobuf: a text field holds a number")
    begin, end = span
    cut = end - begin > limit
    raw = bytes(buf[begin:begin + limit] if cut else buf[begin:end])
    return raw.decode("utf-8", "replace") + ("…" if cut else "")


def signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value
