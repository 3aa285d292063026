"""Chunked tensors read in C order a box at a time (``core/layouts/_stitch``): every way of
cutting a tensor into chunks, every box size, any byte range, against numpy."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from ckpt_inspector.core.layouts._stitch import StitchedSource, tiling_problem
from ckpt_inspector.core.layouts.dcp import Chunk
from ckpt_inspector.core.tensors import BytesRange, FileRange
from ckpt_inspector.core.tree import StorageInfo, TensorInfo


def _cut(full: np.ndarray, cuts: list[list[int]], tmp_path=None):
    """``full`` cut at the given indices of each dimension: (chunk, TensorInfo) pairs, the
    chunks' bytes in memory, or in one file when ``tmp_path`` is given."""
    pieces = []
    blob = bytearray()
    bounds = [list(zip([0, *c], [*c, n])) for c, n in zip(cuts, full.shape)]
    for box in itertools.product(*bounds):
        part = np.ascontiguousarray(full[tuple(slice(a, b) for a, b in box)])
        raw = part.tobytes()
        pieces.append((box, part, len(blob)))
        blob += b"\0" * 3 + raw  # a gap, as between records
        pieces[-1] = (box, part, len(blob) - len(raw))
    path = None
    if tmp_path is not None:
        path = os.fspath(tmp_path / "chunks.bin")
        with open(path, "wb") as f:
            f.write(blob)
    out = []
    for box, part, at in pieces:
        src = FileRange(path, at, part.nbytes) if path else BytesRange(bytes(blob), at,
                                                                       part.nbytes)
        info = TensorInfo("float32", part.shape,
                          storage=StorageInfo("0", "float32", part.size, "cpu", src))
        out.append((Chunk(tuple(a for a, _b in box), tuple(b - a for a, b in box)), info))
    return out


CASES = [((12, 5), [[4, 9], []]),          # rows, uneven
         ((12, 5), [[], [2]]),             # columns
         ((6, 8), [[3], [5]]),             # a grid
         ((4, 3, 10), [[1], [], [7]]),     # 3-D
         ((4, 3, 10), [[], [1, 2], []]),
         ((37,), [[10, 11, 30]]),          # 1-D
         ((3, 1, 4), [[2], [], []])]


@pytest.mark.parametrize(("shape", "cuts"), CASES)
@pytest.mark.parametrize("size", [4, 12, 40, 100, 1 << 20])
def test_every_cut_and_box_size(shape, cuts, size):
    full = np.arange(np.prod(shape), dtype=np.float32).reshape(shape) * 1.5
    src = StitchedSource(shape, "float32", _cut(full, cuts))
    want = full.tobytes()
    assert b"".join(bytes(b) for b in src.blocks(0, None, size)) == want
    for offset, length in [(0, 7), (5, 33), (4, len(want) - 8), (len(want) - 3, 100)]:
        got = b"".join(bytes(b) for b in src.blocks(offset, length, size))
        assert got == want[offset:offset + length], (offset, length)
    assert all(len(b) <= max(size, 4) for b in src.blocks(0, None, size))
    assert bytes(src.buffer()) == want


def test_rows_from_a_file_are_read_in_place(tmp_path):
    full = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32)
    src = StitchedSource(full.shape, "float32", _cut(full, [[20, 33], []], tmp_path))
    assert b"".join(src.chunks(0, None, 64)) == full.tobytes()
    assert src.read(28, 100) == full.tobytes()[28:128]
    assert src._buf is None  # streamed: never the whole tensor


def test_chunks_that_do_not_cover_are_an_error():
    full = np.zeros((4, 4), np.float32)
    pieces = _cut(full, [[2], []])[:1]
    with pytest.raises(Exception, match="do not cover"):
        list(StitchedSource((4, 4), "float32", pieces).blocks())


@pytest.mark.parametrize(("shape", "boxes", "problem"), [
    ((4, 4), [((0, 0), (2, 4)), ((2, 0), (2, 4))], None),
    ((6, 8), [((a, b), (3, 4)) for a in (0, 3) for b in (0, 4)], None),
    ((), [((), ())], None),
    ((8,), [((0,), (4,)), ((0,), (4,))], "overlap"),            # a duplicate hides a gap
    ((4, 4), [((0, 0), (3, 4)), ((2, 0), (1, 4))], "overlap"),  # counts add up: 16
    ((4, 4), [((0, 0), (2, 4)), ((2, 0), (2, 3)), ((2, 3), (2, 1))], None),
    ((4, 1), [((0, 0), (4,))], "2 offsets and 1 sizes"),
    ((4,), [((2,), (4,))], "runs past"),
    ((4,), [((0,), (2,))], "elements"),
])
def test_tiling_is_checked_exactly(shape, boxes, problem):
    got = tiling_problem(shape, boxes)
    assert (got is None) if problem is None else (problem in (got or "")), got


def test_many_chunks_are_checked_within_a_bound(monkeypatch):
    from ckpt_inspector.core.layouts import _stitch

    rows = [((i, 0), (1, 4)) for i in range(20_000)]  # row-sharded: a sweep of one each
    assert tiling_problem((20_000, 4), rows) is None
    cols = [((0, i), (4, 1)) for i in range(20_000)]
    assert tiling_problem((4, 20_000), cols) is None  # swept along the other dimension
    monkeypatch.setattr(_stitch, "MAX_OVERLAP_WORK", 1000)
    grid = [((i, j), (1, 1)) for i in range(100) for j in range(100)]
    assert "too many" in tiling_problem((100, 100), grid)
