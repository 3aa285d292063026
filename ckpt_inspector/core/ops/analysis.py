"""What the views show of one tensor or a pair of tensors, computed as jobs for a worker:
statistics then a histogram (:func:`analyse`), both sides' statistics and the histogram of
their difference (:func:`analyse_pair`), and how many bins a histogram gets until the user
picks a number (:func:`auto_bins`). Qt-free.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.ops.histogram import Histogram, histogram
from ckpt_inspector.core.ops.stats import Stats, compute
from ckpt_inspector.core.ops.tensor_diff import Numbers, difference_histogram
from ckpt_inspector.core.ops.tensor_diff import numbers as numbers_of
from ckpt_inspector.core.progress import CancelToken, Job, Progress
from ckpt_inspector.core.tree import TensorInfo


def analyse(info: TensorInfo, bins: int, cancel: CancelToken | None = None
            ) -> Job[tuple[Stats, Histogram | None]]:
    """Statistics, then the histogram (a job for a worker; ``cancel`` ends it within a chunk)."""
    stats = yield from compute(info, cancel=cancel)
    hist = (yield from histogram(info, stats, bins, cancel)) if stats.min is not None else None
    return stats, hist


def only_histogram(info: TensorInfo, stats: Stats, bins: int,
                   cancel: CancelToken | None = None) -> Job[Histogram]:
    return (yield from histogram(info, stats, bins, cancel))


def unreadable(info: TensorInfo) -> str:
    """Why the values of ``info`` cannot be shown ("" when they can)."""
    if info.problem:
        return f"This tensor cannot be read: {info.problem}"
    if info.storage is None or info.storage.source is None:
        return "This tensor has no data in the file (only its description)."
    if info.layout != "strided":
        return f"A {info.layout} tensor: there are no dense values to show."
    if info.numel == 0:
        return "An empty tensor: it has no values."
    return ""


def auto_bins(n: int) -> int:
    """Bins for ``n`` values until the user picks a number: the Rice rule, 10 to 100."""
    return max(10, min(100, round(2 * n ** (1 / 3))))


def stats_from_json(data: dict[str, Any]) -> Stats:
    """A :class:`Stats` from the ``stats --json`` entry of one tensor."""
    known = Stats.__dataclass_fields__
    values = {k: v for k, v in data.items() if k in known}
    for k, v in values.items():
        if isinstance(v, str) and k not in ("dtype", "kind", "device", "note"):
            values[k] = float(v)  # 'inf', 'nan'
    values["top_values"] = [tuple(p) for p in values.get("top_values", [])]
    return Stats(**values)


@dataclass
class Piece:
    """One finished part of :func:`analyse_pair`: ``what`` is a, b, numbers or hist; ``value``
    the result or the message of why it could not be computed."""

    what: str
    value: Any


def analyse_pair(a: TensorInfo | None, b: TensorInfo | None,
                 pair: tuple[TensorInfo, TensorInfo, Numbers | None] | None, bins: int,
                 cancel: CancelToken | None = None) -> Generator[Progress | Piece, None, bool]:
    """Statistics of ``a`` and ``b`` (those given), then, for ``pair``, the histogram of
    A − B (after the difference's numbers when they are not known yet). Each result is
    yielded as a :class:`Piece` as soon as it is there, so going elsewhere keeps it."""
    for what, info in (("a", a), ("b", b)):
        if info is None:
            continue
        try:
            stats = yield from compute(info, "cpu", cancel, f"{what.upper()} statistics")
        except (CheckpointError, OSError, ValueError) as err:
            stats = str(err) or type(err).__name__
        yield Piece(what, stats)
    if pair is None:
        return True
    ta, tb, numbers = pair
    try:
        if numbers is None:
            yield Progress("comparing values")
            numbers = numbers_of(ta, tb, cancel)
            yield Piece("numbers", numbers)
        hist = yield from difference_histogram(ta, tb, numbers, bins, cancel)
    except (CheckpointError, OSError, ValueError) as err:
        hist = str(err) or type(err).__name__
    yield Piece("hist", hist)
    return True
