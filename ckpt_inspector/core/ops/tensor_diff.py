"""Two tensors compared: byte for byte first, in chunks read in lockstep from both files
(:func:`same_bytes`, exact, as fast as reading the files once), then, for a pair that
differs, as numbers in float64 (:func:`numbers`: max/mean absolute difference, relative L2
difference, cosine similarity) and the histogram of A − B (:func:`difference_histogram`)."""

from __future__ import annotations

import contextlib
import math
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.ops.histogram import Histogram
from ckpt_inspector.core.ops.passes import CHUNK_ELEMENTS, element_chunks
from ckpt_inspector.core.ops.stats import format_number
from ckpt_inspector.core.progress import Cancelled, CancelToken, Job, Progress
from ckpt_inspector.core.tensors import mapped_file, to_numpy
from ckpt_inspector.core.tree import TensorInfo

RAW_BLOCK = 4 << 20  # bytes compared at a time
FAULT_AROUND = 2 << 20  # fault-around (64 KiB) and large page-cache folios (up to 2 MiB)


@dataclass
class Numbers:
    """How two tensors of the same shape differ, computed in float64."""

    numel: int
    changed: int = 0  # elements whose values differ (NaN against NaN counts as equal)
    max_abs: float = 0.0
    mean_abs: float = 0.0
    rel_l2: float = 0.0  # ||A - B|| / max(||A||, ||B||): 0 same, 1 unrelated, 2 opposite
    cosine: float | None = None
    nan_mismatch: int = 0  # positions where only one side is NaN or ±inf differs
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        def num(x: float | None) -> float | str | None:
            if x is None or math.isfinite(x):
                return x
            return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
        return {"numel": self.numel, "changed": self.changed, "max_abs": num(self.max_abs),
                "mean_abs": num(self.mean_abs), "rel_l2": num(self.rel_l2),
                "cosine": num(self.cosine), "nan_mismatch": self.nan_mismatch,
                **({"note": self.note} if self.note else {})}


def raw_blocks(info: TensorInfo, size: int | None = None,
               buffer: bytearray | None = None) -> Iterator[memoryview]:
    """The tensor's bytes in C order, ``size`` at a time (views of a reused buffer,
    ``buffer`` if given)."""
    size = size or RAW_BLOCK
    if info.storage is None or info.storage.source is None or info.problem:
        raise CheckpointError(info.problem or "this tensor has no data in the file")
    if info.layout != "strided":
        raise CheckpointError(f"{info.layout} tensors have no dense values to compare")
    item = info.itemsize
    if info.is_contiguous():
        yield from info.storage.source.blocks(info.storage_offset * item, info.numel * item,
                                              size, buffer)
        return
    view = to_numpy(info)
    flat_rows = view.reshape(view.shape[0], -1) if view.ndim > 1 else view.reshape(1, -1)
    row_bytes = max(1, flat_rows.shape[1] * view.itemsize)
    step = max(1, size // row_bytes)
    for r in range(0, flat_rows.shape[0], step):
        yield memoryview(np.ascontiguousarray(flat_rows[r:r + step]).reshape(-1).view(np.uint8))


class Buffers:
    """What a byte comparison reuses from one tensor to the next: a read buffer per side
    and the comparison's output (fresh ones per tensor cost more than the reading)."""

    def __init__(self, size: int):
        self.size = size
        self.out = np.empty(size // 8 + 1, dtype=bool)
        self._read: tuple[bytearray, bytearray] | None = None

    def read(self) -> tuple[bytearray, bytearray]:
        """Read buffers for A and B (only tensors that are not mapped in place need them)."""
        if self._read is None:
            self._read = (bytearray(self.size), bytearray(self.size))
        return self._read

    def equal(self, x: memoryview, y: memoryview) -> bool:
        n = len(x)
        words = n // 8
        if words:
            head = slice(0, words * 8)
            wx = np.frombuffer(x[head], np.uint64)
            wy = np.frombuffer(y[head], np.uint64)
            out = self.out[:words] if words <= len(self.out) else None
            if not np.equal(wx, wy, out=out).all():
                return False
        return x[words * 8:] == y[words * 8:]


def _paired(ia: Iterator[Any], ib: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
    """Pieces of the same length from two streams of arrays (or memoryviews) whose pieces
    may be cut differently. Each stream is advanced only when its piece is used up, so a
    piece that is a view of a reused buffer stays valid while it is paired."""
    xa = xb = None
    try:
        while True:
            if xa is None or not len(xa):
                xa = next(ia, None)
            if xb is None or not len(xb):
                xb = next(ib, None)
            if xa is None or xb is None:
                if xa is not None or xb is not None:
                    raise ValueError("the two tensors have different numbers of elements")
                return
            n = min(len(xa), len(xb))
            yield xa[:n], xb[:n]
            xa, xb = xa[n:], xb[n:]
    finally:
        ia.close()
        ib.close()


def _mapped_bytes(info: TensorInfo) -> tuple[Any, int] | None:
    """(the file's read-only map, offset of the tensor's first byte) for a contiguous tensor
    that lies uncompressed in a file, else None."""
    src = info.storage.source if info.storage is not None else None
    span = src.file_span() if src is not None else None
    if span is None or not info.is_contiguous() or info.problem or info.layout != "strided":
        return None
    start = span[1] + info.storage_offset * info.itemsize
    mm = mapped_file(span[0])
    if start + info.nbytes > len(mm):
        raise CheckpointError(f"{span[0]}: storage data runs past the end of the file")
    return mm, start


def _release(mm: Any, start: int, length: int) -> None:
    """Drop the pages of ``[start, start+length)`` from this process's map (they stay in
    the page cache): resident memory stays at one block however big the files are."""
    # the kernel maps more than the faulting page (the aligned 64 KiB around it, or a
    # whole large folio of the page cache): drop a margin on both sides too
    first = max(0, start - FAULT_AROUND)
    first -= first % mmap.PAGESIZE
    end = min(len(mm), start + length + FAULT_AROUND)
    with contextlib.suppress(AttributeError, ValueError, OSError):  # not Linux
        mm.madvise(mmap.MADV_DONTNEED, first, end - first)


def _same_mapped(a: tuple[Any, int], b: tuple[Any, int], nbytes: int, buffers: Buffers,
                 cancel: CancelToken | None) -> bool:
    """Compare two byte ranges of mapped files in place: no copy, one block resident."""
    (ma, sa), (mb, sb) = a, b
    words = sa % 8 == 0 and sb % 8 == 0
    kind, width = (np.uint64, 8) if words else (np.uint8, 1)
    step = buffers.size
    for pos in range(0, nbytes, step):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        n = min(step, nbytes - pos)
        whole = n - n % width
        x = np.frombuffer(ma, kind, whole // width, sa + pos)
        y = np.frombuffer(mb, kind, whole // width, sb + pos)
        out = buffers.out[:len(x)] if len(x) <= len(buffers.out) else None
        same = bool(np.equal(x, y, out=out).all()) and (
            ma[sa + pos + whole:sa + pos + n] == mb[sb + pos + whole:sb + pos + n])
        del x, y
        _release(ma, sa + pos, n)
        _release(mb, sb + pos, n)
        if not same:
            return False
    return True


def same_bytes(a: TensorInfo, b: TensorInfo, cancel: CancelToken | None = None,
               buffers: Buffers | None = None) -> bool:
    """True when the two tensors hold the same bytes: compared in place in memory-mapped
    files where both are contiguous there, else read in lockstep."""
    buffers = buffers or Buffers(RAW_BLOCK)
    if a.nbytes != b.nbytes:
        return False
    ma, mb = _mapped_bytes(a), _mapped_bytes(b)
    if ma is not None and mb is not None:
        return _same_mapped(ma, mb, a.nbytes, buffers, cancel)
    buf_a, buf_b = buffers.read()
    pieces = _paired(raw_blocks(a, buffers.size, buf_a), raw_blocks(b, buffers.size, buf_b))
    try:
        for xa, xb in pieces:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if not buffers.equal(xa, xb):
                return False
        return True
    finally:
        pieces.close()


def same_place(a: TensorInfo, b: TensorInfo) -> bool:
    """Both are the same bytes of the same file (a file compared with itself)."""
    sa, sb = a.storage, b.storage
    if sa is None or sb is None or sa.source is None or sb.source is None:
        return False
    fa, fb = sa.source.file_span(), sb.source.file_span()
    return (fa is not None and fa == fb and a.dtype == b.dtype and a.shape == b.shape
            and a.stride == b.stride and a.storage_offset == b.storage_offset)


class _Acc:
    """float64 sums over pairs of chunks. Values beyond 2**480 in magnitude (only float64
    tensors have them) are divided by a common power of two first, so that squares and
    their sums cannot overflow; the ratios (relative L2, cosine) do not depend on it."""

    LIMIT = 2.0**480

    def __init__(self, numel: int):
        self.n = Numbers(numel)
        self.abs_sum = self.d2 = self.a2 = self.b2 = self.ab = 0.0
        self.scale = 1.0
        self.finite = 0

    def _rescale(self, biggest: float) -> None:
        new = 2.0 ** (math.frexp(biggest)[1] - 480)
        f = self.scale / new
        self.a2 *= f * f
        self.b2 *= f * f
        self.d2 *= f * f
        self.ab *= f * f
        self.abs_sum *= f
        self.scale = new

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a = a.astype(np.float64, copy=False)
        b = b.astype(np.float64, copy=False)
        fa, fb = np.isfinite(a), np.isfinite(b)
        both = fa & fb
        if not both.all():
            nan_a, nan_b = np.isnan(a), np.isnan(b)
            special = ~both
            # equal specials (NaN and NaN, inf and inf) are not changes; the rest are
            same_special = special & ((nan_a & nan_b) | (~nan_a & ~nan_b & (a == b)))
            mismatched = int(np.count_nonzero(special & ~same_special))
            self.n.nan_mismatch += mismatched
            self.n.changed += mismatched
            a, b = a[both], b[both]
        if not len(a):
            return
        biggest = max(float(np.abs(a).max()), float(np.abs(b).max()))
        if biggest > self.LIMIT * self.scale:
            self._rescale(biggest)
        if self.scale != 1.0:
            a, b = a / self.scale, b / self.scale
        d = a - b
        self.n.changed += int(np.count_nonzero(d))
        ad = np.abs(d)
        with np.errstate(over="ignore"):
            self.n.max_abs = max(self.n.max_abs, float(ad.max()) * self.scale)
        self.abs_sum += float(ad.sum())
        self.d2 += float(np.dot(d, d))
        self.a2 += float(np.dot(a, a))
        self.b2 += float(np.dot(b, b))
        self.ab += float(np.dot(a, b))
        self.finite += len(d)

    def finish(self) -> Numbers:
        n = self.n
        with np.errstate(over="ignore"):
            n.mean_abs = float(np.float64(self.abs_sum) * self.scale / self.finite
                               ) if self.finite else 0.0
        norm_a, norm_b, d = math.sqrt(self.a2), math.sqrt(self.b2), math.sqrt(self.d2)
        top = max(norm_a, norm_b)
        n.rel_l2 = d / top if top else 0.0  # both all zero: then d is zero too
        denom = norm_a * norm_b
        n.cosine = max(-1.0, min(1.0, self.ab / denom)) if denom else None
        if n.nan_mismatch:  # A − B is NaN or inf there: no finite summary of it is honest
            n.max_abs = n.mean_abs = n.rel_l2 = math.nan
            n.cosine = None
        return n


def _values(info: TensorInfo) -> Iterator[np.ndarray]:
    chunks = element_chunks(info, CHUNK_ELEMENTS)
    try:
        for values, _index in chunks:
            yield values
    finally:
        chunks.close()


def numbers(a: TensorInfo, b: TensorInfo, cancel: CancelToken | None = None) -> Numbers:
    """Differences of two tensors with the same number of elements, in float64.
    Complex tensors are compared by magnitude (as the statistics are)."""
    acc = _Acc(a.numel)
    pieces = _paired(_values(a), _values(b))
    try:
        for va, vb in pieces:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            acc.add(va, vb)
    finally:
        pieces.close()
    out = acc.finish()
    if "complex" in a.dtype or "complex" in b.dtype:
        out.note = "complex values compared by magnitude"
    return out


def difference_histogram(a: TensorInfo, b: TensorInfo, numbers_: Numbers, bins: int = 100,
                         cancel: CancelToken | None = None) -> Job[Histogram]:
    """Counts of A − B over ``bins`` equal bins from −max|A−B| to +max|A−B| (both finite),
    exact over every element; returns a :class:`~ckpt_inspector.core.ops.stats.Histogram`
    whose ``nan`` counts the positions where the difference is not finite."""
    span = numbers_.max_abs or 0.5
    edges = np.linspace(-span, span, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    special = done = 0
    total = a.numel
    pieces = _paired(_values(a), _values(b))
    try:
        for va, vb in pieces:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            d = va.astype(np.float64) - vb.astype(np.float64)
            finite = np.isfinite(d)
            if not finite.all():
                special += int(len(d) - np.count_nonzero(finite))
                d = d[finite]
            counts += np.histogram(d, bins=bins, range=(-span, span))[0]
            done += len(va)
            if done % (1 << 22) < len(va) or done == total:
                yield Progress("difference histogram", done, total)
    finally:
        pieces.close()
    return Histogram(edges, counts, None, special, 0, 0)


def format_cosine(c: float | None, digits: int = 4) -> str:
    """A cosine similarity with ``digits`` significant digits, like the other figures of a
    difference; one that rounds to ±1 says how far from it it is (``1 − 5.001e-09``), where
    a fine-tuned weight's cosine lies, rather than needing nine digits."""
    if c is None:
        return "-"
    if not math.isfinite(c) or abs(c) >= 1 or f"{abs(c):.{digits}g}" != "1":
        return format_number(c, digits)
    return f"{'-' if c < 0 else ''}1 {'+' if c < 0 else '−'} " \
           f"{format_number(1 - abs(c), digits)}"


def describe_numbers(n: Numbers) -> str:
    if not n.changed and not n.nan_mismatch:
        return "the same values" + (f" ({n.note})" if n.note else "")
    parts = [f"{n.changed:,} of {n.numel:,} changed"]
    if n.nan_mismatch:
        parts.append(f"{n.nan_mismatch:,} NaN/inf on one side only")
    if n.changed > n.nan_mismatch:  # finite values changed too
        parts += [f"max |A−B| {format_number(n.max_abs)}",
                  f"mean |A−B| {format_number(n.mean_abs)}",
                  f"rel L2 {format_number(n.rel_l2)}"]
        if n.cosine is not None:
            parts.append(f"cos {format_cosine(n.cosine, 6)}")
    if n.note:
        parts.append(n.note)
    return ", ".join(parts)
