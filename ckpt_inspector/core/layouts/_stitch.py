"""A tensor saved in chunks (DCP's DTensor / ShardedTensor pieces), read in C order a
piece at a time: :class:`StitchedSource`.

The elements are cut into *boxes* that are contiguous in C order: a fixed index in the
first ``k`` dimensions, a run of indices in dimension ``k``, everything in the
dimensions after it, ``k`` the first dimension whose inner block fits in a piece. Each
chunk meets a box in a region that is contiguous in the chunk too (its own run in
dimension ``k``, whole trailing dimensions), so filling a box takes one read per chunk
that meets it: straight into the box (``preadv`` where the chunk lies in a file) when
the chunk spans the trailing dimensions (row-sharded chunks), through a small slab
placed by numpy otherwise. A pass over the tensor holds one box, never the tensor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.tensors import DataSource

BOX = 16 << 20  # bytes a box of buffer() holds at most (unless one element is larger)


class StitchedSource(DataSource):
    """The bytes of a tensor of ``shape`` saved as ``pieces``: ``(chunk, info)`` with
    ``chunk.offsets`` / ``chunk.sizes`` and the chunk's own ``TensorInfo``, chunks that
    tile ``shape`` (:func:`tiling_problem` says None)."""

    def __init__(self, shape: tuple[int, ...], dtype: str, pieces: list[tuple[Any, Any]]):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.pieces = pieces
        self.item = dtypes.itemsize(dtype) or 1
        self.nbytes = math.prod(shape) * self.item
        self._buf: memoryview | None = None

    # -- the grid of boxes -------------------------------------------------------------------
    def _grid(self, size: int) -> tuple[int, int, int]:
        """``(k, unit, per_box)``: the dimension boxes run along, the elements of one step
        along it, and the steps a box of at most ``size`` bytes takes."""
        shape = self.shape
        k = 0
        while k < len(shape) - 1 and math.prod(shape[k + 1:]) * self.item > size:
            k += 1
        unit = math.prod(shape[k + 1:])
        return k, unit, max(1, size // max(1, unit * self.item))

    def _boxes(self, first: int, last: int, size: int) -> Iterator[tuple[tuple[int, ...], int,
                                                                         int, int]]:
        """``(prefix, a, b, start element)`` of the boxes that cover elements
        ``[first, last)``: indices ``prefix`` in the dimensions before ``k``, ``[a, b)``
        along ``k``."""
        k, unit, per = self._grid(size)
        dim = self.shape[k]
        u = first // unit
        end = -(-last // unit)
        while u < end:
            p, a = divmod(u, dim)
            b = min(dim, a + per, a + (end - u))
            prefix = _unravel(p, self.shape[:k])
            yield prefix, a, b, (p * dim + a) * unit
            u += b - a

    def _fill(self, out: memoryview, prefix: tuple[int, ...], a: int, b: int) -> None:
        """Write the elements of box (prefix, [a, b)) into ``out`` (its bytes, C order)."""
        import numpy as np

        k = len(prefix)
        trailing = self.shape[k + 1:]
        box_shape = (b - a, *trailing)
        filled = 0
        for chunk, info in self.pieces:
            off, sz = chunk.offsets, chunk.sizes
            if any(not (o <= i < o + s) for i, o, s in zip(prefix, off, sz)):
                continue
            lo, hi = max(a, off[k]), min(b, off[k] + sz[k])
            if lo >= hi:
                continue
            inner = math.prod(sz[k + 1:])
            local = [i - o for i, o in zip(prefix, off)] + [lo - off[k]]
            start = sum(i * s for i, s in zip(local, _strides(sz)))
            count = (hi - lo) * inner
            whole_rows = tuple(sz[k + 1:]) == tuple(trailing)
            if whole_rows:  # the region is contiguous in the box too
                dest = out[(lo - a) * inner * self.item:(hi - a) * inner * self.item]
                _read_elements(info, start, count, dest)
            else:
                slab = bytearray(count * self.item)
                _read_elements(info, start, count, memoryview(slab))
                box = np.frombuffer(out, np.uint8).reshape(*box_shape, self.item)
                where = (slice(lo - a, hi - a),
                         *(slice(o, o + s) for o, s in zip(off[k + 1:], sz[k + 1:])))
                box[where] = np.frombuffer(slab, np.uint8).reshape(hi - lo, *sz[k + 1:],
                                                                   self.item)
            filled += count
        if filled != (b - a) * math.prod(trailing):
            raise CheckpointError("the chunks do not cover the tensor")

    # -- DataSource --------------------------------------------------------------------------
    @property
    def remote(self) -> bool:
        return any(info.storage is not None and info.storage.source is not None and
                   info.storage.source.remote for _chunk, info in self.pieces)

    def blocks(self, offset: int = 0, length: int | None = None, size: int = 1 << 20,
               buffer: bytearray | None = None) -> Iterator[memoryview]:
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        if end <= offset:
            return
        size = max(size, self.item)
        item = self.item
        work = bytearray(max(size, _box_bytes(self, size)))
        view = memoryview(work)
        for prefix, a, b, start in self._boxes(offset // item, -(-end // item), size):
            n = (b - a) * math.prod(self.shape[len(prefix) + 1:]) * item
            self._fill(view[:n], prefix, a, b)
            lo, hi = max(offset, start * item), min(end, start * item + n)
            yield view[lo - start * item:hi - start * item]

    def chunks(self, offset: int = 0, length: int | None = None,
               size: int = 16 << 20) -> Iterator[bytes]:
        """Like :meth:`blocks`, each piece a new buffer of its own (filled in place: no
        copy)."""
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        if end <= offset:
            return
        item = self.item
        size = max(size, item)
        for prefix, a, b, start in self._boxes(offset // item, -(-end // item), size):
            n = (b - a) * math.prod(self.shape[len(prefix) + 1:]) * item
            box = bytearray(n)
            self._fill(memoryview(box), prefix, a, b)
            lo, hi = max(offset, start * item), min(end, start * item + n)
            yield box if (lo, hi) == (start * item, start * item + n) else \
                box[lo - start * item:hi - start * item]

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        if self._buf is not None:
            return super().read(offset, length)
        return b"".join(self.chunks(offset, length))

    def buffer(self) -> memoryview:
        """The whole tensor (what a view of arbitrary slices needs), filled box by box."""
        if self._buf is None:
            out = memoryview(bytearray(self.nbytes))
            for prefix, a, b, start in self._boxes(0, self.nbytes // self.item, BOX):
                n = (b - a) * math.prod(self.shape[len(prefix) + 1:]) * self.item
                self._fill(out[start * self.item:start * self.item + n], prefix, a, b)
            self._buf = out
        return self._buf

    def __repr__(self) -> str:
        return f"StitchedSource({list(self.shape)}, {self.dtype}, {len(self.pieces)} pieces)"


MAX_OVERLAP_WORK = 1 << 22  # pairs of chunks compared, at most, to find an overlap


def tiling_problem(shape: tuple[int, ...],
                   boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> str | None:
    """Why chunks ``(offsets, sizes)`` do not tile ``shape`` exactly (each chunk inside it,
    one offset and size per dimension, no two overlapping, every element covered), or
    None. Overlaps are found by a sweep along the dimension with the most distinct
    offsets, at most :data:`MAX_OVERLAP_WORK` comparisons."""
    ndim = len(shape)
    for off, sz in boxes:
        if len(off) != ndim or len(sz) != ndim:
            return (f"a chunk with {len(off)} offsets and {len(sz)} sizes in a tensor of "
                    f"{ndim} dimensions")
        if any(o + s > n for o, s, n in zip(off, sz, shape)):
            return f"the chunk at {list(off)} of shape {list(sz)} runs past it"
    covered = sum(math.prod(sz) for _off, sz in boxes)
    if covered != math.prod(shape):
        return f"they hold {covered:,} elements where it has {math.prod(shape):,}"
    return _overlap(ndim, [b for b in boxes if math.prod(b[1])])


def _overlap(ndim: int, boxes: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> str | None:
    if ndim == 0 or len(boxes) < 2:
        return None
    d = max(range(ndim), key=lambda i: len({off[i] for off, _sz in boxes}))
    active: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    work = 0
    for off, sz in sorted(boxes, key=lambda b: b[0][d]):
        active = [b for b in active if b[0][d] + b[1][d] > off[d]]
        work += len(active) + 1
        if work > MAX_OVERLAP_WORK:
            return f"{len(boxes):,} chunks: too many to check that none overlap"
        for o2, s2 in active:
            if all(a < b + t and b < a + s for a, s, b, t in zip(off, sz, o2, s2)):
                return f"the chunks at {list(o2)} and {list(off)} overlap"
        active.append((off, sz))
    return None


def _box_bytes(src: StitchedSource, size: int) -> int:
    k, unit, per = src._grid(size)
    return min(per, src.shape[k]) * unit * src.item


def _unravel(p: int, dims: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for d in reversed(dims):
        p, r = divmod(p, d)
        out.append(r)
    return tuple(reversed(out))


def _strides(sizes: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for s in reversed(sizes):
        out.append(acc)
        acc *= s
    return list(reversed(out))


def _read_elements(info: Any, start: int, count: int, dest: memoryview) -> None:
    """Elements ``[start, start + count)`` of a chunk (C order) into ``dest``."""
    item = info.itemsize
    source = info.storage.source
    if not info.is_contiguous() or source.byteorder != "little":
        import numpy as np

        from ckpt_inspector.core.tensors import to_numpy

        flat = np.ascontiguousarray(to_numpy(info)).reshape(-1)[start:start + count]
        if flat.dtype.byteorder == ">":
            flat = flat.byteswap()
        dest[:] = memoryview(flat.view(np.uint8))
        return
    pos = (info.storage_offset + start) * item
    n = count * item
    span = source.file_span()
    if span is None and source.remote:  # a chunk at a URL: this region only, fetched
        got = b"".join(source.chunks(pos, n))
        if len(got) != n:
            raise CheckpointError("a chunk's data ends early")
        dest[:n] = got
        return
    if span is None:
        buf = source.buffer()
        if pos + n > len(buf):
            raise CheckpointError("a chunk's data ends early")
        dest[:n] = buf[pos:pos + n]
        return
    path, base = span
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < n:
            got = os.preadv(fd, [dest[done:n]], base + pos + done)
            if got <= 0:
                raise CheckpointError(f"{path}: the file ends inside a chunk")
            done += got
    finally:
        os.close(fd)
