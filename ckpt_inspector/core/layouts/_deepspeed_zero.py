"""The fp32 master weights of a DeepSpeed ZeRO checkpoint, gathered from the flat partitions
of each rank, the way DeepSpeed's own ``zero_to_fp32.py`` does it -- without loading them.

Each rank's ``*_optim_states.pt`` holds one flat fp32 tensor per parameter group
(``single_partition_of_fp32_groups`` for stages 1 and 2, ``fp32_flat_groups`` for stage 3).

- **Stages 1 and 2**: a group's full flat vector is the concatenation of every rank's
  partition of it (rank 0 first); its parameters lie one after the other from element 0, in
  the order of ``param_shapes[group]``. The vector ends with padding (each group is
  aligned to ``2 * world_size`` elements); a parameter may straddle two ranks.
- **Stage 3**: every parameter is cut into ``world_size`` equal pieces of
  ``ceil(numel / world_size)`` elements (the last padded); rank ``r`` holds piece ``r``, at
  the same offset in its own concatenation of groups. Frozen parameters are cut the same
  way, their pieces in ``frozen_param_fragments`` of each rank's model states file.

A gathered tensor is a list of :class:`Seg` (a run of elements of one partition);
:class:`FlatPieces` reads them in C order, run by run, straight from each rank's file.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.tensors import DataSource, FileRange
from ckpt_inspector.core.tree import StorageInfo, TensorInfo


@dataclass
class Part:
    """One flat partition: a 1-D tensor of one rank's file (``info`` None when that file
    is missing or did not read; ``numel`` is then what the other ranks hold)."""

    rel: str
    numel: int
    info: TensorInfo | None = None
    problem: str | None = None
    group: int = 0


@dataclass
class Seg:
    part: Part
    start: int  # element offset in the partition
    numel: int


class Short(Exception):
    """The partitions end before the elements a parameter needs."""


class Flat:
    """The concatenation of some partitions; a run of it is found by bisection, so taking
    a parameter costs the partitions it spans, not all of them."""

    def __init__(self, parts: list[Part]):
        self.parts = parts
        self.starts = list(itertools.accumulate((p.numel for p in parts), initial=0))

    @property
    def numel(self) -> int:
        return self.starts[-1]

    def span(self, start: int, n: int) -> int:
        """How many partitions elements ``[start, start + n)`` touch (at most)."""
        if n <= 0:
            return 0
        return bisect.bisect_left(self.starts, start + n) - bisect.bisect_right(
            self.starts, start) + 1

    def take(self, start: int, n: int) -> list[Seg]:
        """Elements ``[start, start + n)`` of the concatenation."""
        over = start + n - self.numel
        if over > 0:
            raise Short(f"the flat partitions end {count(min(over, n))} element(s) before "
                        "its end")
        out: list[Seg] = []
        i = bisect.bisect_right(self.starts, start) - 1
        while n > 0:
            k = min(n, self.starts[i + 1] - start)
            if k > 0:
                out.append(Seg(self.parts[i], start - self.starts[i], k))
                start += k
                n -= k
            i += 1
        return out


def take(parts: list[Part], start: int, n: int) -> list[Seg]:
    """Elements ``[start, start + n)`` of the concatenation of ``parts``."""
    return Flat(parts).take(start, n)


def head(segs: list[Seg], n: int) -> list[Seg]:
    """The first ``n`` elements of ``segs`` (dropping the padding after them)."""
    out = []
    for seg in segs:
        if n <= 0:
            break
        k = min(n, seg.numel)
        out.append(Seg(seg.part, seg.start, k))
        n -= k
    return out


def zero3_take(ranks: list[Flat], offset: int, per: int, n: int) -> list[Seg]:
    """A stage 3 parameter of ``n`` elements: ``per`` elements at ``offset`` of each rank's
    concatenation of groups, rank after rank (only the ranks holding some of it), without
    the padding at the end."""
    k = ranks_needed(n, per)
    return head([s for rank in ranks[:k] for s in rank.take(offset, per)], n)


def ceil_div(x: int, y: int) -> int:
    """``ceil(x / y)`` in integers (a float overflows on the sizes a file may claim)."""
    return -(-x // y)


def zero2_align(x: int, world: int) -> int:
    align = 2 * world
    return align * ceil_div(x, align)


def partitioned(numel: int, world: int) -> int:
    """Elements of a stage 3 parameter each rank holds (with the padding)."""
    return ceil_div(numel, world)


def ranks_needed(numel: int, per: int) -> int:
    """How many ranks hold some of a stage 3 parameter (the others hold only padding)."""
    return ceil_div(numel, per) if per > 0 else 0


def unusable(rel: str, t: TensorInfo, end: int | None = None) -> str | None:
    """Why a flat partition cannot be read as the elements it claims (checked before any
    piece is made of it: a file may claim a huge tensor over a few stored bytes), or, with
    ``end``, as its first ``end`` elements."""
    if t.problem:
        return f"{rel}: {t.problem}"
    if t.storage is None or t.storage.source is None:
        return f"its partition in {rel} has no data"
    if not t.is_contiguous() or t.layout != "strided":
        return f"its partition in {rel} is not a contiguous tensor"
    if (t.storage_offset + (t.numel if end is None else end)) * t.itemsize > \
            t.storage.source.nbytes:
        return f"{rel} ends inside its partition"
    return None


# -- tensors ------------------------------------------------------------------------------
def gathered(name: str, shape: tuple[int, ...], segs: list[Seg]) -> TensorInfo:
    """The logical tensor ``name`` made of ``segs`` (C order): its data source reads them
    from their files; a run whose file is missing or short leaves it damaged."""
    first = segs[0].part if segs else None
    dtype = next((s.part.info.dtype for s in segs if s.part.info is not None), "float32")
    info = TensorInfo(dtype, shape, file=first.rel if first else None)
    info.pieces = []
    at = 0
    for seg in segs:
        info.pieces.append({"file": seg.part.rel, "group": seg.part.group,
                            "offset": seg.start, "numel": seg.numel, "at": at})
        at += seg.numel
    problem = _problem(segs, dtype)
    if problem is not None:
        info.problem = problem
        return info
    runs = [_run(seg) for seg in segs]
    source: DataSource = runs[0] if len(runs) == 1 else FlatPieces(runs)
    info.storage = StorageInfo(name, dtype, math.prod(shape), "cpu", source)
    return info


def _problem(segs: list[Seg], dtype: str) -> str | None:
    for seg in segs:
        part = seg.part
        if part.info is None:
            return part.problem or f"its file {part.rel} cannot be read"
        t = part.info
        if t.dtype != dtype:
            return f"its partitions in {part.rel} are {t.dtype}, others {dtype}"
        why = unusable(part.rel, t, seg.start + seg.numel)
        if why is not None:
            return why
    return None


def _run(seg: Seg) -> DataSource:
    """The bytes of one run: a range of the partition's file where it lies there."""
    t = seg.part.info
    assert t is not None and t.storage is not None and t.storage.source is not None
    item = t.itemsize
    start = (t.storage_offset + seg.start) * item
    src = t.storage.source
    span = src.file_span()
    if span is not None:
        return FileRange(span[0], span[1] + start, seg.numel * item, src.byteorder)
    return _Slice(src, start, seg.numel * item)


class _Slice(DataSource):
    """``length`` bytes at ``offset`` of another source (one not lying as is in a file)."""

    def __init__(self, source: DataSource, offset: int, length: int):
        self.source = source
        self.offset = offset
        self.nbytes = length
        self.byteorder = source.byteorder

    @property
    def remote(self) -> bool:
        return self.source.remote

    def buffer(self) -> memoryview:
        if self.remote:  # its own bytes by range, never the whole partition
            return memoryview(b"".join(self.chunks()))
        return self.source.buffer()[self.offset:self.offset + self.nbytes]

    def chunks(self, offset: int = 0, length: int | None = None,
               size: int = 16 << 20) -> Iterator[bytes]:
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        yield from self.source.chunks(self.offset + offset, max(0, end - offset), size)


class FlatPieces(DataSource):
    """The bytes of a tensor gathered from runs of several partitions, in C order.

    :meth:`chunks` and :meth:`blocks` stream run by run (each read by range from its
    file); only :meth:`buffer` assembles the tensor, one tensor's worth, never kept."""

    def __init__(self, runs: list[DataSource]):
        self.runs = runs
        self.nbytes = sum(r.nbytes for r in runs)
        self.byteorder = runs[0].byteorder if runs else "little"

    @property
    def remote(self) -> bool:
        return any(run.remote for run in self.runs)

    def _spans(self, offset: int, length: int | None) -> Iterator[tuple[DataSource, int, int]]:
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        base = 0
        for run in self.runs:
            lo, hi = max(offset, base), min(end, base + run.nbytes)
            if lo < hi:
                yield run, lo - base, hi - lo
            base += run.nbytes
            if base >= end:
                break

    def chunks(self, offset: int = 0, length: int | None = None,
               size: int = 16 << 20) -> Iterator[bytes]:
        for run, off, n in self._spans(offset, length):
            yield from run.chunks(off, n, size)

    def blocks(self, offset: int = 0, length: int | None = None, size: int = 1 << 20,
               buffer: bytearray | None = None) -> Iterator[memoryview]:
        for run, off, n in self._spans(offset, length):
            yield from run.blocks(off, n, size, buffer)

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        return b"".join(self.chunks(offset, length))

    def buffer(self) -> memoryview:
        out = bytearray(self.nbytes)
        pos = 0
        for piece in self.chunks():
            out[pos:pos + len(piece)] = piece
            pos += len(piece)
        return memoryview(out)

    def __repr__(self) -> str:
        return f"FlatPieces({len(self.runs)} runs, {self.nbytes} bytes)"


def as_shape(name: str, info: TensorInfo, shape: tuple[int, ...], rel: str) -> TensorInfo:
    """A tensor saved whole (a frozen parameter of stages 1-2) under its full shape."""
    if tuple(info.shape) == tuple(shape):
        return info
    if info.numel < math.prod(shape):
        return _short(info, shape, rel)
    return gathered(name, shape, [Seg(Part(rel, info.numel, info), 0, math.prod(shape))])


def _short(info: TensorInfo, shape: tuple[int, ...], rel: str) -> TensorInfo:
    out = TensorInfo(info.dtype, shape, file=rel)
    out.problem = f"{rel} holds {info.numel:,} element(s) of it, not {math.prod(shape):,}"
    return out


def count(x: int) -> str:
    """``x`` with thousands separators, or its order of magnitude where it is huge (a
    shape in a file may claim any size)."""
    return f"{x:,}" if x < 10**18 else f"about 10^{len(str(x)) - 1}"


def numels(parts: list[Any]) -> int:
    return sum(p.numel for p in parts)
