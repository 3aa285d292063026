"""safetensors: mutations of the header JSON and of the 8-byte length in front of it.

The reader trusts nothing but the header, so that is what changes: dtypes it does not
know, shapes with huge or negative dimensions, data offsets that overlap, run backwards
or past the end, ``__metadata__`` of the wrong type, and a header length that disagrees
with the JSON (cutting into it, reaching past the file, or padding it).
"""

from __future__ import annotations

import json
import random
import struct

import json_values

DTYPES = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3",
          "F8_E5M2", "C64", "U16", "U32", "U64", "F4", "F6_E2M3", "E8M0", "f32", "", "F32 ",
          "F8_E4M3FNUZ")


def parse(data: bytes) -> tuple[dict, bytes] | None:
    if len(data) < 8:
        return None
    (n,) = struct.unpack_from("<Q", data)
    try:
        header = json.loads(data[8:8 + n])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return (header, data[8 + n:]) if isinstance(header, dict) else None


def _tensors(header: dict) -> list[dict]:
    return [v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]


def m_dtype(rng: random.Random, header: dict, _body: bytearray) -> None:
    for t in rng.sample(_tensors(header), min(2, len(_tensors(header)))):
        t["dtype"] = rng.choice((*DTYPES, None, 7, ["F32"], {"F32": 1}))


def m_shape(rng: random.Random, header: dict, _body: bytearray) -> None:
    ts = _tensors(header)
    if not ts:
        return
    t = rng.choice(ts)
    shape = t.get("shape") if isinstance(t.get("shape"), list) else [1]
    t["shape"] = rng.choice((
        [1 << 62, 1 << 62], [-1], [0], [], [1 << 64], [2 ** 31] * 4, [1] * 10_000,
        [*shape, 0], [*shape, 1], shape[::-1], [1.0], [True], ["3"], None, 3, [[2]],
        [10 ** 400], [2 ** 1000]))


def m_offsets(rng: random.Random, header: dict, body: bytearray) -> None:
    ts = _tensors(header)
    if not ts:
        return
    t = rng.choice(ts)
    offsets = t.get("data_offsets")
    begin, end = ([*offsets, 0, 0] if isinstance(offsets, list) else [0, 0])[:2]
    n = len(body)
    other = rng.choice(ts).get("data_offsets")
    t["data_offsets"] = rng.choice((
        [end, begin], [begin, n + 1], [n, n], [-1, end], [begin, 1 << 64], [0, 1 << 63],
        other, [begin + 1, end + 1] if isinstance(begin, int) and isinstance(end, int) else [],
        [begin], [begin, end, 0], [float(begin) if isinstance(begin, int) else 0.0, end],
        None, "0,4", [str(begin), end]))


def m_metadata(rng: random.Random, header: dict, _body: bytearray) -> None:
    header["__metadata__"] = rng.choice((
        None, [], "x", 5, {"format": ["pt"]}, {"format": {"nested": 1}}, {"x" * 100: "y" * 10000},
        {str(i): str(i) for i in range(2000)}, {"\udcff": "x"}, {"format": "pt"}))


def m_entries(rng: random.Random, header: dict, _body: bytearray) -> None:
    keys = [k for k in header if k != "__metadata__"]
    choice = rng.randrange(4)
    if choice == 0 and keys:
        del header[rng.choice(keys)]
    elif choice == 1 and keys:
        header[rng.choice(keys)] = json_values.weird(rng)
    elif choice == 2 and keys:  # many tensors sharing bytes (a header of at most ~2 MB)
        template = header[rng.choice(keys)]
        most = (2 << 20) // (len(json.dumps(template)) + 16)
        for i in range(min(rng.choice((2, 100, 20_000)), most)):
            header[f"copy.{i}"] = dict(template) if isinstance(template, dict) else template
    else:
        header[rng.choice(("", "a" * 10000, "\udcff", "__metadata__", "x\ny"))] = {
            "dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


def m_generic(rng: random.Random, header: dict, _body: bytearray) -> None:
    json_values.mutate_value(rng, header, ("dtype", "shape", "data_offsets", "__metadata__"))


def m_body(rng: random.Random, _header: dict, body: bytearray) -> None:
    if rng.random() < 0.7:
        del body[rng.randrange(len(body) + 1):]
    else:
        body.extend(b"\0" * rng.choice((1, 4, 4096)))


MUTATIONS = (m_dtype, m_shape, m_shape, m_offsets, m_offsets, m_metadata, m_entries,
             m_generic, m_body)


def mutate(rng: random.Random, data: bytes) -> bytes | None:
    parsed = parse(data)
    if parsed is None:
        return None
    header, rest = parsed
    body = bytearray(rest)
    for _ in range(rng.choice((1, 1, 2, 3))):
        rng.choice(MUTATIONS)(rng, header, body)
    text = json_values.dumps(rng, header) if rng.random() < 0.3 else \
        json.dumps(header).encode("utf-8", "surrogatepass")
    length = len(text)
    choice = rng.randrange(8)
    if choice == 0:  # the length cuts into the JSON or reaches past the file
        length = rng.choice((0, 1, 2, length - 1, length + 1, length + len(body) + 1,
                             100 << 20, (100 << 20) + 1, 1 << 63, (1 << 64) - 1))
    elif choice == 1:  # padded with spaces, as the safetensors writer aligns
        text += b" " * (-len(text) % 8)
        length = len(text)
    return struct.pack("<Q", length) + text + bytes(body)
