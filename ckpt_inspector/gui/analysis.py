"""What has been computed about the tensors of one file (or of the two files of a
comparison), kept while the file is open, for every view to read.

Views never cache results nor ask each other: they ask this model for a figure
(:meth:`Analysis.analyse`, :meth:`Analysis.analyse_pair`), read what is known
(:meth:`stats`, :meth:`histogram`, :meth:`numbers`) and redraw on :attr:`changed`. The
model runs one job at a time for the subject shown (asking for another cancels it, and
the cancelled job's results are dropped), on a worker thread, or in a torch child for a
device other than the CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from ckpt_inspector.core.adapters.update import stats_argv
from ckpt_inspector.core.ops.analysis import (
    Piece,
    analyse,
    analyse_pair,
    only_histogram,
    stats_from_json,
)
from ckpt_inspector.core.ops.diff import Entry, Numbers
from ckpt_inspector.core.ops.histogram import Histogram
from ckpt_inspector.core.ops.stats import Stats
from ckpt_inspector.core.progress import Progress
from ckpt_inspector.core.tree import TensorInfo
from ckpt_inspector.gui.errors import describe
from ckpt_inspector.gui.jobs import ChildError, JobRunner, Task

Subject = Any  # a TensorInfo (one tensor) or an Entry (a pair of tensors)


class Analysis(QObject):
    """Statistics by tensor, histograms by (tensor or pair, bins), the numbers of a pair's
    difference; a part of a pair that could not be computed is kept as its message in place
    of the result, a tensor's failure as its :meth:`error`.

    ``changed(subject)`` when a result for it arrives, ``progressed(subject, Progress)``
    while it is computed, ``finished(subject, error)`` when its job ends (``error`` empty
    unless it failed)."""

    changed = Signal(object)
    progressed = Signal(object, object)
    finished = Signal(object, str)

    def __init__(self, runner: JobRunner, parent: QObject | None = None):
        super().__init__(parent)
        self.runner = runner
        self.path = ""
        self.device = "cpu"
        self._stats: dict[int, Stats | str] = {}
        self._hists: dict[tuple[int, int], Histogram | str | None] = {}
        self._numbers: dict[int, Numbers] = {}
        self._errors: dict[int, str] = {}  # why a tensor's figures could not be computed
        self._job: Task | None = None
        self._subject: Subject = None

    # -- what is known ----------------------------------------------------------------------------
    def stats(self, info: TensorInfo) -> Stats | str | None:
        """The statistics of ``info``, the message of why they could not be computed, or
        None when they have not been."""
        return self._stats.get(id(info))

    def error(self, info: TensorInfo) -> str:
        """Why the last computation for ``info`` failed ("" if it did not)."""
        return self._errors.get(id(info), "")

    def has_histogram(self, subject: Subject, bins: int) -> bool:
        return (id(subject), bins) in self._hists

    def histogram(self, subject: Subject, bins: int) -> Histogram | str | None:
        """The histogram (of a tensor, or of A − B for an entry), a message, or None."""
        return self._hists.get((id(subject), bins))

    def numbers(self, entry: Entry) -> Numbers | None:
        return entry.numbers or self._numbers.get(id(entry))

    @property
    def busy(self) -> bool:
        return self._job is not None

    @property
    def subject(self) -> Subject:
        """What the running job computes for, if one runs."""
        return self._subject if self._job is not None else None

    # -- computing ------------------------------------------------------------------------------
    def analyse(self, info: TensorInfo, key: str, bins: int) -> None:
        """Compute what is missing of the statistics and the ``bins`` histogram of ``info``
        (the tensor ``key`` of :attr:`path`)."""
        self.cancel()
        self._subject = info
        name = key or "(root)"
        stats = self._stats.get(id(info))
        if isinstance(stats, Stats):
            self._job = self.runner.run(
                f"Histogram of {key}", only_histogram, info, stats, bins, quiet=True,
                cancellable=True, on_result=lambda h: self._tensor_done(info, bins, stats, h),
                on_progress=lambda p: self._progress(info, p),
                on_error=lambda e: self._failed(info, e))
        elif self.device != "cpu":
            self._job = self.runner.run_child(
                f"Statistics of {name}", ["stats", self.path, *stats_argv(info, key), "--device",
                                          self.device, "--bins", str(bins), "--progress"],
                quiet=True,
                on_result=lambda r: self._child_done(info, bins, r),
                on_progress=lambda p: self._progress(info, p),
                on_error=lambda e: self._failed(info, e))
        else:
            self._job = self.runner.run(
                f"Statistics of {name}", analyse, info, bins, quiet=True, cancellable=True,
                on_result=lambda r: self._tensor_done(info, bins, *r),
                on_progress=lambda p: self._progress(info, p),
                on_error=lambda e: self._failed(info, e))

    def analyse_pair(self, entry: Entry, a: TensorInfo | None, b: TensorInfo | None,
                     pair: tuple[TensorInfo, TensorInfo, Numbers | None] | None,
                     bins: int) -> None:
        """Compute the statistics of the sides given and, for ``pair``, the histogram of
        A − B with ``bins`` bins; each part is kept as soon as it is there."""
        self.cancel()
        self._subject = entry
        self._job = self.runner.run(
            f"Statistics of {entry.key}", analyse_pair, a, b, pair, bins, quiet=True,
            cancellable=True, on_progress=lambda p: self._pair_progress(entry, bins, p),
            on_result=lambda _r: self._end(entry, ""),
            on_error=lambda e: self._failed(entry, e))

    def cancel(self) -> bool:
        """Stop the running job, if any (its results so far are kept, the rest dropped)."""
        job, self._job = self._job, None
        if job is not None:
            self.runner.cancel(job)
        return job is not None

    def clear(self) -> None:
        """A new file, or the same one read again: forget everything."""
        self.cancel()
        self._stats.clear()
        self._hists.clear()
        self._numbers.clear()
        self._errors.clear()

    # -- results --------------------------------------------------------------------------------
    def _progress(self, subject: Subject, p: Progress) -> None:
        if subject is self._subject:
            self.progressed.emit(subject, p)

    def _tensor_done(self, info: TensorInfo, bins: int, stats: Stats,
                     hist: Histogram | None) -> None:
        self._stats[id(info)] = stats
        self._hists[(id(info), bins)] = hist
        self._end(info, "")
        self.changed.emit(info)

    def _child_done(self, info: TensorInfo, bins: int, result: dict[str, Any]) -> None:
        data = next(iter(result.get("tensors", {}).values()), None)
        if not data or "error" in data:
            self._failed(info, ChildError((data or {}).get("error", "no result")))
            return
        stats = stats_from_json(data)
        h = data.get("histogram")
        hist = Histogram(np.asarray(h["edges"]), np.asarray(h["counts"], dtype=np.int64),
                         h["sampled"], stats.nan, stats.posinf, stats.neginf) if h else None
        self._tensor_done(info, bins, stats, hist)

    def _pair_progress(self, entry: Entry, bins: int, p: Progress | Piece) -> None:
        if isinstance(p, Progress):
            self._progress(entry, p)
            return
        if p.what in ("a", "b"):
            side = entry.a if p.what == "a" else entry.b
            self._stats[id(side.tensor)] = p.value
        elif p.what == "numbers":
            self._numbers[id(entry)] = p.value
        else:
            self._hists[(id(entry), bins)] = p.value
        self.changed.emit(entry)

    def _failed(self, subject: Subject, err: BaseException) -> None:
        if isinstance(subject, TensorInfo):
            message = str(err) or type(err).__name__
            self._errors[id(subject)] = message
        else:
            message = describe(err)[0]
        self._end(subject, message)

    def _end(self, subject: Subject, error: str) -> None:
        if subject is self._subject:
            self._job = None
        self.finished.emit(subject, error)
