"""The histogram of a tensor's values: equal bins between its finite min and max, exact up
to a size and from an evenly spread sample above it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ckpt_inspector.core.ops.passes import accumulate
from ckpt_inspector.core.progress import CancelToken, Job
from ckpt_inspector.core.tree import TensorInfo

if TYPE_CHECKING:
    from ckpt_inspector.core.ops.stats import Stats

HISTOGRAM_EXACT_LIMIT = 64 << 20  # elements; larger tensors are sampled
HISTOGRAM_SAMPLE = 16 << 20


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
    halve = not math.isfinite(hi - lo)  # a span wider than float64 holds: bin halves
    edges = np.linspace(lo / 2, hi / 2, bins + 1) * 2 if halve else np.linspace(lo, hi, bins + 1)
    numel = info.numel
    special = bool(stats.nan or stats.posinf or stats.neginf)
    step = numel // HISTOGRAM_SAMPLE if numel > HISTOGRAM_EXACT_LIMIT else 1

    def make() -> _HistAcc:
        return _HistAcc(bins, (lo, hi), step, special, halve)

    acc = yield from accumulate(info, make, "histogram", chunk=1 << 20, cancel=cancel)
    acc.flush()
    return Histogram(edges, acc.counts, acc.sample if step > 1 else None,
                     stats.nan, stats.posinf, stats.neginf)


class _HistAcc:
    """Counts of one worker: every ``step``-th element (by its index in the whole tensor,
    so the workers' samples add up to one evenly spread sample), histogrammed in batches."""

    def __init__(self, bins: int, span: tuple[float, float], step: int, special: bool,
                 halve: bool = False):
        self.bins, self.span, self.step, self.special = bins, span, step, special
        self.halve = halve
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
            span = self.span
            narrow = f.dtype.kind == "f" and span[1] - span[0] > float(np.finfo(f.dtype).max)
            if self.halve or narrow:
                # numpy bins in the data's dtype: a span that overflows it gives no bins
                f = f.astype(np.float64)
                if self.halve:
                    f, span = f / 2, (span[0] / 2, span[1] / 2)
            self.counts += np.histogram(f, bins=self.bins, range=span)[0]
            self.pending.clear()
            self.held = 0

    def merge(self, other: _HistAcc) -> None:
        other.flush()
        self.counts += other.counts
        self.sample += other.sample
