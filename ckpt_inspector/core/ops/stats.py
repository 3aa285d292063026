"""Statistics of one tensor, read in chunks (the passes over the data are in
:mod:`~ckpt_inspector.core.ops.passes`, the histogram in
:mod:`~ckpt_inspector.core.ops.histogram`).

Everything here is a generator that yields :class:`Progress` between chunks (a
caller stops it there) and returns its result. Data comes from the file in
pieces of :data:`CHUNK_ELEMENTS` read into reused buffers, never the whole checkpoint;
accumulation is in float64. bfloat16 and the float8 types are decoded with
``ml_dtypes``; quantized tensors are dequantized with their scale and zero
point; complex tensors are described by their magnitude.

On the CPU the arithmetic is numpy's, which releases the GIL in its loops, so a
window stays responsive while it runs. For another device (``cuda:0``, ``mps``)
the chunks go to that device and torch does the arithmetic.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.ops.histogram import Histogram, histogram
from ckpt_inspector.core.ops.passes import (
    CHUNK_ELEMENTS,
    READ_BYTES,
    REPORT_EVERY,
    accumulate,
    element_chunks,
    numpy_dtype,
)
from ckpt_inspector.core.progress import CancelToken, Job, Progress
from ckpt_inspector.core.tree import TensorInfo

# the statistics' own names, and the passes and histogram their callers use with them
__all__ = ["CHUNK_ELEMENTS", "READ_BYTES", "REPORT_EVERY", "Histogram", "Stats", "accumulate",
           "compute", "element_chunks", "format_number", "histogram", "numpy_dtype"]

ACCUMULATE = np.float64  # sums within a chunk (across chunks they are always float64)
VALUE_COUNT_RANGE = 1 << 16  # integer tensors spanning less than this get value counts


@dataclass
class Stats:
    dtype: str
    numel: int
    kind: str  # float | int | bool | complex (magnitude) | quantized (dequantized)
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    abs_mean: float | None = None
    l2: float | None = None
    nan: int = 0
    posinf: int = 0
    neginf: int = 0
    zeros: int = 0
    sparsity: float = 0.0
    finite: int = 0
    true: int | None = None  # bool tensors
    unique: int | None = None  # integer tensors with a small range
    top_values: list[tuple[int, int]] = field(default_factory=list)  # (value, count)
    device: str = "cpu"
    seconds: float = 0.0
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = repr(v)
        return out


def format_number(x: float | str | None, digits: int = 6) -> str:
    """A statistic as people read it: ``-`` for none, integers whole, else ``digits``
    significant digits."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, int) or (math.isfinite(x) and x == int(x) and abs(x) < 1e15):
        return f"{int(x):,}"
    return f"{x:.{digits}g}"


# -- reading elements as numbers --------------------------------------------------------
def readable(info: TensorInfo) -> None:
    """Raise :class:`CheckpointError` for a tensor that cannot be read (the layouts' problem
    names its file):
    one marked damaged (a missing or short file, a key its shard lacks) or of a dtype we
    cannot decode."""
    if info.problem:
        raise CheckpointError(info.problem)
    if info.dtype not in dtypes.KNOWN:
        raise CheckpointError(f"dtype {info.dtype} cannot be read")


def _kind(info: TensorInfo) -> str:
    d = dtypes.KNOWN[info.dtype]
    if info.quantization or (d.numpy == "<f4" and d.block is not None):  # ggml blocks
        return "quantized"
    kind = d.kind
    return {"uint": "int", "bits": "int"}.get(kind, kind)


# OpenBLAS shares a float64 dot product of more than 10,000 elements among its threads:
# beside the statistics' own threads on a busy machine that costs milliseconds a chunk
_DOT_BLOCK = 8192


def _sum_of_squares(x: np.ndarray) -> float:
    """``x · x`` for a contiguous float64 vector, in float64, in blocks BLAS does on the
    calling thread."""
    whole = len(x) - len(x) % _DOT_BLOCK
    total = 0.0
    if whole:
        rows = x[:whole].reshape(-1, _DOT_BLOCK)
        vecdot = getattr(np, "vecdot", None)  # numpy 2
        total = float(vecdot(rows, rows).sum()) if vecdot is not None else \
            sum(float(np.dot(r, r)) for r in rows)
    tail = x[whole:]
    return total + float(np.dot(tail, tail))


class _Moments:
    """Count, mean and centred sum of squares merged chunk by chunk (Chan et al.), so the
    standard deviation keeps its digits when the mean is far from zero. Sums, deviations
    and their squares are taken in float64 (a float32 chunk is widened as it is centred),
    so the spread and the norm agree with a float64 computation to 1e-13 relative or better,
    not 1e-7 as float32 squares would."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.abs_sum = 0.0
        self.lo = math.inf
        self.hi = -math.inf
        self.zeros = 0
        self.buf: np.ndarray | None = None
        self.mask: np.ndarray | None = None
        self.wide: np.ndarray | None = None  # the chunk's deviations, in float64

    def merge(self, k: int, total: float, m2: float, abs_sum: float, lo: float, hi: float,
              zeros: int) -> None:
        """Add a chunk of ``k`` finite values described by its sum, centred sum of squares,
        sum of magnitudes, extremes and count of zeros."""
        if k == 0:
            return
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        self.abs_sum += abs_sum
        self.zeros += zeros
        mc = total / k
        delta, n = mc - self.mean, self.n + k
        self.m2 += m2 + delta * delta * self.n * k / n
        self.mean += delta * k / n
        self.n = n

    def add(self, c: np.ndarray, total: float) -> None:
        """Merge the chunk ``c`` of finite values whose sum is ``total``."""
        k = len(c)
        if k == 0:
            return
        cmin, cmax = float(c.min()), float(c.max())
        if self.buf is None or len(self.buf) < k or self.buf.dtype != c.dtype:
            self.buf = np.empty(max(k, CHUNK_ELEMENTS), dtype=c.dtype)
            self.mask = np.empty(len(self.buf), dtype=bool)
        if self.wide is None or len(self.wide) < k:
            self.wide = np.empty(max(k, CHUNK_ELEMENTS), dtype=np.float64)
        deviation = self.wide[:k]
        np.copyto(deviation, c)
        with np.errstate(over="ignore", invalid="ignore"):  # near float64's limit: inf
            np.subtract(deviation, total / k, out=deviation)
            m2 = _sum_of_squares(deviation)
        buf = self.buf[:k]
        np.abs(c, out=buf)
        with np.errstate(over="ignore"):  # values near float64's limit: the sum is inf
            abs_sum = float(np.add.reduce(buf, dtype=ACCUMULATE))
        zeros = 0
        if cmin <= 0.0 <= cmax:  # else there is no zero to count
            zeros = k - int(np.count_nonzero(np.not_equal(c, 0, out=self.mask[:k])))
        self.merge(k, total, m2, abs_sum, cmin, cmax, zeros)

    def finish(self, stats: Stats) -> None:
        stats.zeros, stats.finite = self.zeros, self.n
        if self.n:
            stats.min, stats.max, stats.mean = self.lo, self.hi, self.mean
            stats.std = math.sqrt(max(self.m2 / self.n, 0.0))
            stats.abs_mean = self.abs_sum / self.n
            stats.l2 = math.sqrt(self.m2 + self.n * self.mean * self.mean)
            if not math.isfinite(stats.l2):
                stats.note = "the sum of squares overflows float64"


def compute(info: TensorInfo, device: str = "cpu", cancel: CancelToken | None = None,
            stage: str = "statistics") -> Job[Stats]:
    """Statistics of a tensor; yields progress (named ``stage``) about every 4M elements,
    returns :class:`Stats`. Setting ``cancel`` (from any thread) ends it with
    :class:`Cancelled`."""
    start = time.perf_counter()
    readable(info)
    kind = _kind(info)
    numel = info.numel
    stats = Stats(info.dtype, numel, "complex magnitude" if kind == "complex" else kind,
                  device=device)
    if numel == 0:
        stats.note = "empty tensor"
        return stats
    if device != "cpu":
        result = yield from _compute_torch(info, stats, device, stage)
        result.seconds = time.perf_counter() - start
        return result
    if kind in ("int", "bool"):
        yield from _integer_stats(info, stats, stage)
    else:
        yield from _float_stats(info, stats, cancel, stage)
    stats.sparsity = stats.zeros / numel
    stats.seconds = time.perf_counter() - start
    return stats


class _FloatAcc:
    """Running float statistics of the chunks seen (one per worker thread)."""

    def __init__(self) -> None:
        self.m = _Moments()
        self.nan = self.posinf = self.neginf = 0

    def add(self, values: np.ndarray, _index: int) -> None:
        total = float(np.add.reduce(values, dtype=ACCUMULATE))
        if math.isfinite(total):  # so there is no NaN and no inf: the usual case
            self.m.add(values, total)
            return
        isnan = np.isnan(values)
        isinf = np.isinf(values)
        self.nan += int(isnan.sum())
        self.posinf += int((isinf & (values > 0)).sum())
        self.neginf += int((isinf & (values < 0)).sum())
        good = values[~(isnan | isinf)].astype(np.float64)
        self.m.add(good, float(np.add.reduce(good)))

    def merge(self, other: _FloatAcc) -> None:
        o = other.m
        self.m.merge(o.n, o.mean * o.n, o.m2, o.abs_sum, o.lo, o.hi, o.zeros)
        self.nan += other.nan
        self.posinf += other.posinf
        self.neginf += other.neginf


def _float_stats(info: TensorInfo, stats: Stats, cancel: CancelToken | None,
                 stage: str) -> Job[None]:
    acc = yield from accumulate(info, _FloatAcc, stage, cancel=cancel)
    stats.nan, stats.posinf, stats.neginf = acc.nan, acc.posinf, acc.neginf
    acc.m.finish(stats)


def _integer_stats(info: TensorInfo, stats: Stats, stage: str = "statistics") -> Job[None]:
    """Integers and bools with exact integer sums (int64 per chunk where that cannot
    overflow, else Python ints), and value counts when the values span fewer than
    :data:`VALUE_COUNT_RANGE`."""
    total = sabs = ss = 0
    lo: int | None = None
    hi: int | None = None
    zeros = 0
    counts: np.ndarray | None = None
    base = 0
    counting = True
    done = reported = 0
    for values, _index in element_chunks(info, chunk=1 << 20):
        v = values.astype(np.int64) if values.dtype.kind == "b" else values
        cmin, cmax = int(v.min()), int(v.max())
        lo = cmin if lo is None else min(lo, cmin)
        hi = cmax if hi is None else max(hi, cmax)
        big = max(abs(cmin), abs(cmax))
        if big * big * len(v) < 1 << 62:
            wide = v.astype(np.int64, copy=False)
            total += int(np.add.reduce(wide))
            sabs += int(np.add.reduce(np.abs(wide)))
            ss += int(np.dot(wide, wide))
        else:  # int64 could overflow (or uint64 above 2**63): exact Python ints
            py = v.tolist()
            total += sum(py)
            sabs += sum(abs(x) for x in py)
            ss += sum(x * x for x in py)
        zeros += len(v) - int(np.count_nonzero(v))
        if counting:
            if counts is None:
                base = cmin
            if cmin < base or cmax - base >= VALUE_COUNT_RANGE:
                counting, counts = False, None  # the range is too wide for counts
            else:
                c = np.bincount((v - base).astype(np.intp))
                if counts is None:
                    counts = np.zeros(VALUE_COUNT_RANGE, dtype=np.int64)
                counts[:len(c)] += c
        done += len(v)
        if done - reported >= REPORT_EVERY or done == info.numel:
            reported = done
            yield Progress(stage, done, info.numel, info.dtype)
    n = info.numel
    stats.finite, stats.zeros = n, zeros
    stats.min, stats.max = float(lo), float(hi)
    stats.mean, stats.abs_mean = total / n, sabs / n
    stats.std = math.sqrt((ss * n - total * total) / (n * n))  # exact up to the last division
    stats.l2 = math.sqrt(ss)
    if stats.kind == "bool":
        stats.true = total
    if counts is not None:
        nz = np.nonzero(counts)[0]
        stats.unique = len(nz)
        top = nz[np.argsort(-counts[nz], kind="stable")[:10]]
        stats.top_values = [(int(v + base), int(counts[v])) for v in top]


def _compute_torch(info: TensorInfo, stats: Stats, device: str, stage: str = "statistics"
                   ) -> Job[Stats]:
    """The same statistics with the chunks on ``device`` (a GPU) and torch's reductions,
    in float64 there; only a handful of numbers per chunk come back."""
    import torch

    m = _Moments()
    nan = posinf = neginf = 0
    done = reported = 0
    int_like = stats.kind in ("int", "bool")
    for values, _index in element_chunks(info, chunk=1 << 22):
        t = torch.from_numpy(np.ascontiguousarray(values)).to(device).double()
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            nan += int(torch.isnan(t).sum())
            posinf += int((t == math.inf).sum())
            neginf += int((t == -math.inf).sum())
            t = t[finite]
        k = t.numel()
        if k:
            total = t.sum()
            lo, hi = torch.aminmax(t)
            m2 = torch.square(t - total / k).sum()
            row = torch.stack([total, m2, t.abs().sum(), lo, hi, (t == 0).sum().double()])
            total_, m2_, abs_, lo_, hi_, zeros_ = row.tolist()  # one transfer per chunk
            m.merge(k, total_, m2_, abs_, lo_, hi_, int(zeros_))
        done += len(values)
        if done - reported >= REPORT_EVERY or done == info.numel:
            reported = done
            yield Progress(stage, done, info.numel, f"{info.dtype} on {device}")
    stats.nan, stats.posinf, stats.neginf = nan, posinf, neginf
    m.finish(stats)
    stats.sparsity = stats.zeros / info.numel
    if int_like and stats.kind == "bool":
        stats.true = round(m.mean * m.n)
    return stats
