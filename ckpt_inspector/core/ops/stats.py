"""Statistics and histograms of one tensor, read in chunks.

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

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.progress import Cancelled, CancelToken, Job, Progress
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import TensorInfo

CHUNK_ELEMENTS = 1 << 16  # arithmetic in pieces that stay in the CPU cache
READ_BYTES = 1 << 20  # file reads into one reused buffer
ACCUMULATE = np.float64  # sums within a chunk (across chunks they are always float64)
HISTOGRAM_EXACT_LIMIT = 64 << 20  # elements; larger tensors are sampled
HISTOGRAM_SAMPLE = 16 << 20
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
def numpy_dtype(name: str) -> Any:
    """The numpy dtype whose elements match a torch dtype's bytes."""
    import ml_dtypes

    special = {"bfloat16": ml_dtypes.bfloat16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
               "float8_e5m2": ml_dtypes.float8_e5m2, "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
               "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
               "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu}
    if name in special:
        return np.dtype(special[name])
    if name == "complex32":
        return np.dtype("<f2")  # pairs of halves: re, im
    d = dtypes.DTYPES.get(name)
    if d is None or d.numpy is None:
        raise CheckpointError(f"statistics of {name} tensors are not supported")
    return np.dtype(d.numpy)


def _kind(info: TensorInfo) -> str:
    if info.quantization:
        return "quantized"
    kind = dtypes.DTYPES[info.dtype].kind
    return {"uint": "int", "bits": "int"}.get(kind, kind)


def element_chunks(info: TensorInfo, chunk: int | None = None, first: int = 0,
                   count: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """``(values, index of the first)`` in C order, at most ``chunk`` at a time, as numbers:
    floats for float, complex-magnitude and dequantized tensors, integers for int and bool.

    Each array is valid only until the next is asked for: contiguous tensors are read
    into one reused buffer (see :meth:`DataSource.blocks`) and narrow floats widened into
    another, so a pass allocates nothing per chunk and its pieces stay in the CPU cache.
    ``first`` and ``count`` choose a range of elements (contiguous tensors only)."""
    if info.storage is None or info.storage.source is None or info.problem:
        raise CheckpointError(info.problem or "this tensor has no data in the file")
    if info.layout != "strided":
        raise CheckpointError(f"{info.layout} tensors have no dense values to read")
    raw_dtype = numpy_dtype(info.dtype)
    if info.storage.source.byteorder == "big":
        raw_dtype = raw_dtype.newbyteorder(">")
    item = info.itemsize
    numel = info.numel
    if numel == 0:
        return
    chunk = chunk or CHUNK_ELEMENTS
    widen = _Widen(chunk)
    if first or count is not None:
        if not info.is_contiguous():
            raise ValueError("a range of elements needs a contiguous tensor")
        count = min(numel - first, numel if count is None else count)
    if info.is_contiguous():
        per_read = max(1, READ_BYTES // item // chunk) * chunk
        index = first
        n = numel if count is None else count
        for block in info.storage.source.blocks((info.storage_offset + first) * item, n * item,
                                                per_read * item):
            values = np.frombuffer(block, dtype=raw_dtype)
            for s in range(0, len(values), chunk):
                part = values[s:s + chunk]
                yield _as_numbers(info, part, index, widen), index
                index += len(part)
            del values, part  # the buffer is reused by the next read
        return
    view = to_numpy(info)  # a strided view of the memory-mapped storage: copy it by rows
    if view.ndim <= 1:
        flat = view.reshape(-1)
        for s in range(0, numel, chunk):
            part = np.ascontiguousarray(flat[s:s + chunk]).view(raw_dtype)
            yield _as_numbers(info, part, s, widen), s
        return
    rows = view.shape[0]
    row_size = numel // rows
    step = max(1, chunk // max(row_size, 1))
    for r in range(0, rows, step):
        part = np.ascontiguousarray(view[r:r + step]).reshape(-1).view(raw_dtype)
        yield _as_numbers(info, part, r * row_size, widen), r * row_size


class _Widen:
    """A reused float32 buffer that narrow floats (half, bfloat16, float8) widen into."""

    def __init__(self, size: int):
        self.size = size
        self.buf: np.ndarray | None = None

    def __call__(self, values: np.ndarray) -> np.ndarray:
        if len(values) > self.size:
            return values.astype(np.float32)
        if self.buf is None:
            self.buf = np.empty(self.size, dtype=np.float32)
        out = self.buf[:len(values)]
        np.copyto(out, values, casting="unsafe")
        return out


def _as_numbers(info: TensorInfo, values: np.ndarray, index: int,
                widen: _Widen | None = None) -> np.ndarray:
    if info.dtype == "complex32":
        pairs = values.astype(np.float64).reshape(-1, 2)
        return np.hypot(pairs[:, 0], pairs[:, 1])
    if values.dtype.kind == "c":  # magnitude, in float64 whatever the precision
        return np.abs(values.astype(np.complex128, copy=False))
    if info.quantization:
        q = info.quantization
        ints = values.astype(np.float64)
        if q["scheme"].startswith("per_tensor"):
            return (ints - q["zero_point"]) * q["scale"]
        scales = to_numpy(info.components["scales"]).astype(np.float64)
        zeros = to_numpy(info.components["zero_points"]).astype(np.float64)
        axis = q["axis"]
        inner = math.prod(info.shape[axis + 1:])
        channel = (np.arange(index, index + len(values)) // inner) % info.shape[axis]
        return (ints - zeros[channel]) * scales[channel]
    if values.dtype.kind in "iub":
        return values
    if values.dtype.kind != "f" or values.dtype.itemsize < 4 or not values.dtype.isnative:
        return widen(values) if widen is not None else values.astype(np.float32)
    return values


# -- statistics ---------------------------------------------------------------------------------
# Below these magnitudes a chunk's squared deviations cannot overflow its float type.
_SAFE_SQUARES = {4: 1e16, 8: 1e150}


class _Moments:
    """Count, mean and centred sum of squares merged chunk by chunk (Chan et al.), so the
    standard deviation keeps its digits when the mean is far from zero. Sums are taken
    in float64; the squared deviations of a float32 chunk in float32 (BLAS), which costs
    the spread and the norm digits below about 1e-7 relative."""

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
        buf = self.buf[:k]
        if max(-cmin, cmax) < _SAFE_SQUARES.get(c.dtype.itemsize, 0.0):
            np.subtract(c, c.dtype.type(total / k), out=buf)
            m2 = float(np.dot(buf, buf))
        else:  # squares could overflow the data's precision: deviations in float64
            with np.errstate(over="ignore", invalid="ignore"):
                deviation = c.astype(np.float64) - total / k
                m2 = float(np.dot(deviation, deviation))
        np.abs(c, out=buf)
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


REPORT_EVERY = 1 << 22  # elements between progress reports (and chances to cancel)


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


# -- passes over the data, on one or more threads -----------------------------------------------
PARALLEL_MIN = 1 << 23  # elements; smaller tensors are done in the calling thread


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 4))


def _lower_priority() -> None:
    """Make the calling (pool) thread yield the CPU to the rest of the process: with as
    many workers as cores, the window's thread would otherwise wait for a time slice."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)


def _parts(info: TensorInfo, chunk: int) -> list[tuple[int, int]]:
    """Element ranges for the workers: one unless the tensor is big and contiguous."""
    numel = info.numel
    workers = _workers()
    if workers == 1 or numel < PARALLEL_MIN or not info.is_contiguous():
        return [(0, numel)]
    per = -(-numel // workers // chunk) * chunk
    return [(start, min(per, numel - start)) for start in range(0, numel, per)]


def accumulate(info: TensorInfo, make: Any, stage: str, chunk: int | None = None,
               cancel: CancelToken | None = None) -> Job[Any]:
    """Feed every chunk of the tensor to accumulators made by ``make()`` (``add(values,
    index)``, ``merge(other)``); returns the merged one. Big contiguous tensors are split
    among threads (numpy releases the GIL in its loops). Progress is yielded about every
    :data:`REPORT_EVERY` elements; closing the generator, or setting ``cancel``, stops the
    threads at their next chunk."""
    chunk = chunk or CHUNK_ELEMENTS
    numel = info.numel
    parts = _parts(info, chunk)
    if len(parts) == 1:
        acc = make()
        done = reported = 0
        for values, index in element_chunks(info, chunk):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            acc.add(values, index)
            done += len(values)
            if done - reported >= REPORT_EVERY or done == numel:
                reported = done
                yield Progress(stage, done, numel, info.dtype)
        return acc
    halt = threading.Event()  # ours to set: the caller's ``cancel`` may serve another pass
    progress = [0] * len(parts)

    def work(i: int, first: int, count: int) -> Any:
        _lower_priority()
        acc = make()
        for values, index in element_chunks(info, chunk, first, count):
            if halt.is_set() or (cancel is not None and cancel.is_set()):
                return None
            acc.add(values, index)
            progress[i] += len(values)
        return acc

    pool = ThreadPoolExecutor(len(parts), thread_name_prefix="ckpt-stats")
    try:
        futures = [pool.submit(work, i, a, n) for i, (a, n) in enumerate(parts)]
        while True:
            finished, _ = wait(futures, timeout=0.05)
            if len(finished) == len(futures):
                break
            yield Progress(stage, sum(progress), numel, info.dtype)
        results = [f.result() for f in futures]  # a worker's exception is raised here
    finally:
        halt.set()
        pool.shutdown(wait=True)
    if any(r is None for r in results):
        raise Cancelled()
    acc = results[0]
    for other in results[1:]:
        acc.merge(other)
    yield Progress(stage, numel, numel, info.dtype)
    return acc


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


# -- histogram ------------------------------------------------------------------------------------
@dataclass
class Histogram:
    edges: np.ndarray
    counts: np.ndarray
    sampled: int | None = None  # elements in the sample, when the tensor was sampled
    nan: int = 0
    posinf: int = 0
    neginf: int = 0


def histogram(info: TensorInfo, stats: Stats, bins: int = 100,
              cancel: CancelToken | None = None) -> Job[Histogram]:
    """Counts over ``bins`` equal bins between the finite min and max (one per value for
    integers spanning fewer than ``bins`` values); exact up to
    :data:`HISTOGRAM_EXACT_LIMIT` elements, else from an evenly spread sample (every
    k-th element) of about :data:`HISTOGRAM_SAMPLE`, whose size is reported."""
    lo, hi = stats.min, stats.max
    if lo is None or hi is None:
        return Histogram(np.array([0.0, 1.0]), np.zeros(1, dtype=np.int64), None,
                         stats.nan, stats.posinf, stats.neginf)
    if stats.kind in ("int", "bool") and hi - lo + 1 <= bins:
        bins = int(hi - lo) + 1  # one bin per integer, centred on it
        lo, hi = lo - 0.5, hi + 0.5
    elif lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    numel = info.numel
    special = bool(stats.nan or stats.posinf or stats.neginf)
    step = numel // HISTOGRAM_SAMPLE if numel > HISTOGRAM_EXACT_LIMIT else 1

    def make() -> _HistAcc:
        return _HistAcc(bins, (lo, hi), step, special)

    acc = yield from accumulate(info, make, "histogram", chunk=1 << 20, cancel=cancel)
    acc.flush()
    return Histogram(edges, acc.counts, acc.sample if step > 1 else None,
                     stats.nan, stats.posinf, stats.neginf)


class _HistAcc:
    """Counts of one worker: every ``step``-th element (by its index in the whole tensor,
    so the workers' samples add up to one evenly spread sample), histogrammed in batches."""

    def __init__(self, bins: int, span: tuple[float, float], step: int, special: bool):
        self.bins, self.span, self.step, self.special = bins, span, step, special
        self.counts = np.zeros(bins, dtype=np.int64)
        self.pending: list[np.ndarray] = []
        self.held = self.sample = 0

    def add(self, values: np.ndarray, index: int) -> None:
        step = self.step
        picked = values[(-index) % step::step] if step > 1 else values
        self.sample += len(picked)
        self.pending.append(picked.copy())  # the chunk's buffer is reused by the next read
        self.held += len(picked)
        if self.held >= 1 << 20:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            f = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
            if self.special and f.dtype.kind == "f":
                f = f[np.isfinite(f)]
            if f.dtype == np.bool_:  # numpy warns, then converts it the same way
                f = f.view(np.uint8)
            self.counts += np.histogram(f, bins=self.bins, range=self.span)[0]
            self.pending.clear()
            self.held = 0

    def merge(self, other: _HistAcc) -> None:
        other.flush()
        self.counts += other.counts
        self.sample += other.sample


