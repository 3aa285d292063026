"""Just enough of the protobuf wire format to walk an ONNX model without loading it.

Fields are yielded with the position of their payload, so large ``bytes``
fields (tensor data) are never copied: the ONNX reader keeps their offsets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ckpt_inspector.core.errors import CheckpointError

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


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


def fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)``: an int for varints, ``(begin, end)`` otherwise."""
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CheckpointError("malformed protobuf: field number 0")
        if wire == VARINT:
            value, pos = read_varint(buf, pos, end)
            yield number, wire, value
        elif wire == LEN:
            n, pos = read_varint(buf, pos, end)
            if pos + n > end:
                raise CheckpointError("malformed protobuf: field runs past its message")
            yield number, wire, (pos, pos + n)
            pos += n
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


def decode_packed_varints(raw: bytes) -> list[int]:
    out = []
    pos, end = 0, len(raw)
    while pos < end:
        value, pos = read_varint(raw, pos, end)
        out.append(value)
    return out


def text(buf: Any, span: tuple[int, int]) -> str:
    if not isinstance(span, tuple):
        raise CheckpointError("malformed protobuf: a text field holds a number")
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value
