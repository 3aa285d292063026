"""Which mutator fits an input, and the byte-level one every format falls back on.

Structure-aware mutators (one module per container) keep a file valid enough for the
reader to reach its deep code; :func:`havoc` (byte flips, cuts, splices, repeats) finds
what they cannot express. :func:`mutate` picks the mutator from the input's bytes, so it
works on anything libFuzzer hands it as well as on the seeds.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import onnx_mutator
import pickle_mutator
import pt2_mutator
import safetensors_mutator
import tar_mutator
import zip_mutator

FAMILIES = ("zip", "pt2", "tar", "onnx", "safetensors", "pickle")
MAX_INPUT = 8 << 20  # larger mutants only slow the search down


def family(data: bytes) -> str:
    """The container ``data`` looks like (from its bytes; never by running anything)."""
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        tail = data[-(1 << 16):]
        # archive_format is written last by torch.export.save: its name sits in the directory
        return "pt2" if b"/archive_format" in tail or b"/archive_format" in data[:1 << 16] \
            else "zip"
    if data[257:262] == b"ustar":
        return "tar"
    if len(data) >= 9:
        (n,) = struct.unpack_from("<Q", data)
        if 2 <= n <= 100 << 20 and data[8:9] == b"{":
            return "safetensors"
    if data[:1] == b"\x08":
        return "onnx"
    return "pickle"


STRUCTURED: dict[str, Callable[[random.Random, bytes], bytes | None]] = {
    "zip": zip_mutator.mutate,
    "pt2": pt2_mutator.mutate,
    "tar": tar_mutator.mutate,
    "onnx": onnx_mutator.mutate,
    "safetensors": safetensors_mutator.mutate,
    "pickle": pickle_mutator.mutate,
}

INTERESTING_32 = (b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff\xff\xff\xff", b"\0\0\0\0")


def havoc(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """Byte-level mutation: flips, cuts, splices from other seeds, repeats, interesting ints."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        if op == 0 and buf:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 1 and buf:  # cut
            buf = buf[: rng.randrange(len(buf))]
        elif op == 2:  # splice another seed in
            other = rng.choice(pool) if pool else b""
            if other:
                a = rng.randrange(len(other))
                b = min(len(other), a + rng.randint(1, 512))
                at = rng.randrange(len(buf) + 1)
                buf[at:at] = other[a:b]
        elif op == 3 and buf:  # repeat a chunk
            a = rng.randrange(len(buf))
            b = min(len(buf), a + rng.randint(1, 64))
            buf[a:a] = buf[a:b] * rng.randint(2, 50)
        elif op == 4 and buf:  # interesting integers
            at = rng.randrange(len(buf))
            buf[at:at + 4] = rng.choice(INTERESTING_32)
        elif op == 5 and buf:  # drop a chunk
            a = rng.randrange(len(buf))
            del buf[a:a + rng.randint(1, 64)]
    return bytes(buf)


def mutate(rng: random.Random, data: bytes, pool: list[bytes], structured: float = 0.9) -> bytes:
    """A mutant of ``data``: structure-aware (probability ``structured``) where a mutator
    fits the input, sometimes followed by byte-level havoc; havoc alone otherwise."""
    out = None
    mutator = STRUCTURED.get(family(data))
    if mutator is not None and rng.random() < structured:
        out = mutator(rng, data)
        if out is not None and len(out) > MAX_INPUT:
            out = None
        if out is not None and rng.random() < 0.1:
            out = havoc(rng, out, pool)
    return out if out is not None else havoc(rng, data, pool)
