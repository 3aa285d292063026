"""ONNX models as a tree of protobuf fields, and mutations of the fields the reader reads.

A model is parsed into :class:`Msg` nodes wherever the schema below says a field is a
message (ModelProto > GraphProto > TensorProto / ValueInfoProto > TypeProto > ... ),
edited, and encoded again with correct lengths, so an edit deep in an initializer
(its dims, packed or not; data_type; raw_data or typed data of the wrong size;
external data entries) reaches the reader instead of breaking the outer messages.
Some edits break the encoding on purpose: a wrong wire type, a length past its parent.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5

# message kind -> {field number: kind of the sub-message}
SCHEMA = {
    "model": {7: "graph", 8: "opset", 14: "pair"},
    "graph": {1: "node", 5: "tensor", 11: "value", 12: "value", 13: "value"},
    "node": {},
    "tensor": {13: "pair"},
    "value": {2: "type"},
    "type": {1: "tensor_type"},
    "tensor_type": {2: "shape"},
    "shape": {1: "dim"},
    "dim": {},
    "opset": {},
    "pair": {},
}


@dataclass
class Field:
    number: int
    wire: int
    value: int | bytes | Msg
    extra_len: int = 0  # a length that claims more than the field holds


@dataclass
class Msg:
    kind: str
    fields: list[Field] = field(default_factory=list)


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def parse(buf: bytes, kind: str = "model") -> Msg:
    msg = Msg(kind)
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _read_varint(buf, pos)
            msg.fields.append(Field(number, wire, value))
        elif wire == LEN:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("length past the end")
            raw = buf[pos:pos + n]
            pos += n
            sub = SCHEMA[kind].get(number)
            msg.fields.append(Field(number, wire, parse(raw, sub) if sub else raw))
        elif wire in (FIXED64, FIXED32):
            n = 8 if wire == FIXED64 else 4
            msg.fields.append(Field(number, wire, buf[pos:pos + n]))
            pos += n
        else:
            raise ValueError(f"wire type {wire}")
    return msg


def encode(msg: Msg) -> bytes:
    out = bytearray()
    for f in msg.fields:
        out += varint(f.number << 3 | f.wire)
        if f.wire == VARINT:
            out += varint(f.value if isinstance(f.value, int) else len(f.value))
        elif f.wire == LEN:
            raw = encode(f.value) if isinstance(f.value, Msg) else (
                varint(f.value) if isinstance(f.value, int) else f.value)
            out += varint(len(raw) + f.extra_len) + raw
        else:
            raw = f.value if isinstance(f.value, bytes) else struct.pack("<Q", f.value)
            out += raw[:8 if f.wire == FIXED64 else 4].ljust(8 if f.wire == FIXED64 else 4,
                                                              b"\0")
    return bytes(out)


def messages(msg: Msg, kind: str) -> list[Msg]:
    out = [msg] if msg.kind == kind else []
    for f in msg.fields:
        if isinstance(f.value, Msg):
            out += messages(f.value, kind)
    return out


def all_fields(msg: Msg) -> list[tuple[Msg, Field]]:
    out = []
    for f in msg.fields:
        out.append((msg, f))
        if isinstance(f.value, Msg):
            out += all_fields(f.value)
    return out


def _set(msg: Msg, number: int, fields: list[Field]) -> None:
    """Replace every field ``number`` of ``msg`` with ``fields`` (where the first was)."""
    at = next((i for i, f in enumerate(msg.fields) if f.number == number), len(msg.fields))
    msg.fields = [f for f in msg.fields if f.number != number]
    msg.fields[at:at] = fields


def _get(msg: Msg, number: int) -> list[Field]:
    return [f for f in msg.fields if f.number == number]


BIG = (0, 1, 3, 1 << 31, 1 << 32, 1 << 53, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1,
       (1 << 64) - 2)


def _dims(rng: random.Random, old: list[int]) -> list[int]:
    return rng.choice(([rng.choice(BIG)], [rng.choice(BIG), rng.choice(BIG)], [],
                       [*old, 0], [*old, 1 << 62], old[::-1], [1] * 500, [2] * 64,
                       [-1 & ((1 << 64) - 1)], old[:-1]))


def m_dims(rng: random.Random, model: Msg) -> None:
    tensors = messages(model, "tensor")
    if not tensors:
        return
    t = rng.choice(tensors)
    old = [f.value for f in _get(t, 1) if isinstance(f.value, int)]
    new = _dims(rng, old)
    choice = rng.randrange(4)
    if choice == 0:  # packed, as some writers do
        _set(t, 1, [Field(1, LEN, b"".join(varint(d) for d in new))])
    elif choice == 1:  # packed, with a varint cut in half
        _set(t, 1, [Field(1, LEN, b"".join(varint(d) for d in new) + b"\xff")])
    elif choice == 2:  # the wrong wire type
        _set(t, 1, [Field(1, rng.choice((FIXED64, FIXED32)), struct.pack("<Q", d & (2**64 - 1)))
                    for d in new])
    else:
        _set(t, 1, [Field(1, VARINT, d) for d in new])


def m_dtype(rng: random.Random, model: Msg) -> None:
    tensors = messages(model, "tensor")
    if tensors:
        t = rng.choice(tensors)
        _set(t, 2, [Field(2, VARINT, rng.choice((*range(27), 40, 1000, (1 << 64) - 1)))])


def m_data(rng: random.Random, model: Msg) -> None:
    tensors = messages(model, "tensor")
    if not tensors:
        return
    t = rng.choice(tensors)
    raw = next((f.value for f in _get(t, 9) if isinstance(f.value, bytes)), b"\0" * 16)
    choice = rng.randrange(6)
    if choice == 0:
        _set(t, 9, [Field(9, LEN, raw[:rng.randrange(len(raw) + 1)])])
    elif choice == 1:
        _set(t, 9, [Field(9, LEN, raw + b"\0" * rng.choice((1, 4, 4096)))])
    elif choice == 2:
        _set(t, 9, [])
    elif choice == 3:  # typed data instead of raw_data (packed, or one varint per field)
        _set(t, 9, [])
        number = rng.choice((4, 5, 7, 10, 11))
        if rng.random() < 0.5:
            _set(t, number, [Field(number, LEN, raw)])
        else:
            _set(t, number, [Field(number, VARINT, rng.choice(BIG)) for _ in range(3)])
    elif choice == 4:  # raw_data and typed data both
        t.fields.append(Field(4, LEN, raw[:8]))
    else:  # a second raw_data: the last one counts
        t.fields.append(Field(9, LEN, raw + raw))


LOCATIONS = ("weights.bin", "../weights.bin", "/etc/hostname", "", "missing.bin",
             "weights.bin\0x", ".", "sub/../weights.bin", "x" * 5000, "weights.bin/", "~/x")
NUMBERS = ("0", "4", "-1", "abc", "1e3", "99999999999999999999", "4096", "4095", " 8", "0x10")


def m_external(rng: random.Random, model: Msg) -> None:
    tensors = messages(model, "tensor")
    if not tensors:
        return
    t = rng.choice(tensors)
    pairs = [("location", rng.choice(LOCATIONS))]
    for key in ("offset", "length", "checksum", "location"):
        if rng.random() < 0.4:
            pairs.append((key, rng.choice(NUMBERS)))
    _set(t, 13, [Field(13, LEN, Msg("pair", [Field(1, LEN, k.encode()),
                                               Field(2, LEN, v.encode())])) for k, v in pairs])
    if rng.random() < 0.8:
        _set(t, 14, [Field(14, VARINT, rng.choice((1, 1, 0, 2, 1 << 40)))])
    if rng.random() < 0.7:
        _set(t, 9, [])


def m_value_info(rng: random.Random, model: Msg) -> None:
    dims = messages(model, "dim")
    if dims and rng.random() < 0.7:
        d = rng.choice(dims)
        d.fields = rng.choice(([Field(1, VARINT, rng.choice(BIG))], [Field(2, LEN, b"\xff\xfe")],
                               [Field(2, VARINT, 5)], [Field(1, LEN, b"x")], []))
        return
    values = messages(model, "value")
    if values:
        v = rng.choice(values)
        _set(v, 2, [Field(2, LEN, Msg("type", [Field(rng.choice((4, 5, 8)), LEN, b"\x08\x01")]))])


def m_wire(rng: random.Random, model: Msg) -> None:
    """A field of the wrong wire type, anywhere."""
    _msg, f = rng.choice(all_fields(model))
    if f.wire == VARINT:
        f.wire, f.value = LEN, varint(f.value)
    else:
        f.wire, f.value = VARINT, rng.choice(BIG)


def m_length(rng: random.Random, model: Msg) -> None:
    """A length that runs past its message, or an odd field (number 0, groups)."""
    pairs = [(m, f) for m, f in all_fields(model) if f.wire == LEN]
    choice = rng.randrange(3)
    if choice == 0 and pairs:
        rng.choice(pairs)[1].extra_len = rng.choice((1, 2, 1000, 1 << 31))
    elif choice == 1:
        msg = rng.choice([m for m, _ in all_fields(model)] or [model])
        msg.fields.insert(0, Field(rng.choice((0, 19000, (1 << 29) - 1)), VARINT, 1))
    else:
        msg = rng.choice([m for m, _ in all_fields(model)] or [model])
        msg.fields.append(Field(rng.randint(15, 30), rng.choice((3, 4, 6, 7)), b""))


def m_repeat(rng: random.Random, model: Msg) -> None:
    """Many copies of an initializer, node or opset: counts a reader must bound."""
    graphs = messages(model, "graph")
    if not graphs:
        return
    g = graphs[0]
    candidates = [f for f in g.fields if f.number in (1, 5, 11)]
    if candidates:
        f = rng.choice(candidates)
        g.fields.extend([f] * rng.choice((2, 100, 5000)))


def m_top(rng: random.Random, model: Msg) -> None:
    choice = rng.randrange(5)
    if choice == 0:
        _set(model, 1, [Field(1, VARINT, rng.choice((0, 1, 64, 65, 1 << 63)))])
    elif choice == 1:
        _set(model, 7, [])
    elif choice == 2:
        model.fields.append(Field(7, LEN, Msg("graph")))  # a second, empty graph
    elif choice == 3:
        for o in messages(model, "opset"):
            _set(o, 2, [Field(2, VARINT, rng.choice(BIG))])
    else:
        _set(model, 14, [Field(14, LEN, Msg("pair", [Field(1, LEN, b"k"),
                                                     Field(2, LEN, b"\xff" * 40)]))])


MUTATIONS = (m_dims, m_dims, m_dtype, m_data, m_data, m_external, m_external, m_value_info,
             m_wire, m_length, m_repeat, m_top)


def mutate(rng: random.Random, data: bytes) -> bytes | None:
    try:
        model = parse(data)
    except (ValueError, KeyError, IndexError):
        return None
    for _ in range(rng.choice((1, 1, 2, 3))):
        rng.choice(MUTATIONS)(rng, model)
    return encode(model)
