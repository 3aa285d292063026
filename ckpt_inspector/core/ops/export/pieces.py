"""Tensor bytes in pieces: as stored, cast between float types, re-cut to a size.

A tensor's elements go from the source file to an output in pieces of :data:`PIECE`
bytes, so a 2 GB checkpoint never sits in memory, let alone twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import TensorInfo

PIECE = 16 << 20


def tensor_pieces(t: TensorInfo, out_dtype: str) -> Iterator[bytes]:
    """The tensor's elements in C order, little-endian, as ``out_dtype``, in pieces."""
    item = t.itemsize
    source = t.storage.source
    d = dtypes.get(t.dtype)
    if d is not None and d.block is not None and out_dtype != t.dtype:
        yield from _values(t, out_dtype)
        return
    contiguous = t.is_contiguous() and source.byteorder == "little"
    if out_dtype == t.dtype and contiguous:
        yield from source.chunks(t.storage_offset * item, t.numel * item, PIECE)
        return
    if contiguous:  # cast piece by piece
        step = PIECE - PIECE % item
        for raw in source.chunks(t.storage_offset * item, t.numel * item, step):
            yield cast_bytes(raw, t.dtype, out_dtype)
        return
    import numpy as np

    arr = np.ascontiguousarray(to_numpy(t))  # one tensor's worth, for strided views
    if arr.dtype.byteorder == ">":
        arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
    raw = memoryview(arr).cast("B")
    step = PIECE - PIECE % item
    for start in range(0, len(raw), step):
        piece = bytes(raw[start:start + step])
        yield piece if out_dtype == t.dtype else cast_bytes(piece, t.dtype, out_dtype)


def _values(t: TensorInfo, out_dtype: str) -> Iterator[bytes]:
    """A tensor read decoded (sub-byte float codes, dequantized ggml blocks) as float32
    values, cast to ``out_dtype`` from there."""
    import numpy as np

    from ckpt_inspector.core.ops.passes import numpy_dtype

    item = t.itemsize
    step = PIECE - PIECE % (item * 4)
    for raw in t.storage.source.chunks(0, t.numel * item, step):
        f32 = np.frombuffer(raw, numpy_dtype(t.dtype)).astype("<f4").tobytes()
        yield f32 if out_dtype == "float32" else cast_bytes(f32, "float32", out_dtype)


def cast_bytes(raw: bytes, src: str, dst: str) -> bytes:
    """Convert little-endian float data between float64/32/16 and bfloat16 (round to
    nearest even, NaN kept), with numpy alone. Like torch, float64 goes to the 16-bit
    types through float32; values beyond the target's range become ±inf (the
    verification reports them)."""
    import numpy as np

    if src == "bfloat16":
        f32 = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        f32 = np.frombuffer(raw, dtype={"float64": "<f8", "float32": "<f4",
                                        "float16": "<f2"}[src])
    with np.errstate(over="ignore"):
        if src == "float64" and dst in ("float16", "bfloat16"):
            f32 = f32.astype(np.float32)  # torch rounds twice too: float64 → float → half
        if dst == "bfloat16":
            f32 = np.ascontiguousarray(f32, dtype=np.float32)
            bits = f32.view(np.uint32)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            rounded[np.isnan(f32)] = 0x7FC0
            return rounded.tobytes()
        return f32.astype({"float64": "<f8", "float32": "<f4", "float16": "<f2"}[dst]
                          ).tobytes()



def rechunk(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    """The same bytes cut into pieces of ``size`` (the last may be shorter); a piece that
    already has that size passes through uncopied."""
    buf = bytearray()
    for piece in pieces:
        if not buf and len(piece) == size:
            yield piece
            continue
        buf += piece
        start = 0
        while len(buf) - start >= size:
            yield bytes(buf[start:start + size])
            start += size
        if start:
            del buf[:start]
    if buf:
        yield bytes(buf)


def as_float64(raw: bytes, dtype: str) -> Any:
    import numpy as np

    if dtype == "bfloat16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).astype(
            np.float64)
    return np.frombuffer(raw, {"float64": "<f8", "float32": "<f4", "float16": "<f2"}[dtype]
                         ).astype(np.float64)

