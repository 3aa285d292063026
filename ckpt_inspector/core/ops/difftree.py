"""A comparison of two files as the window shows it: both files read and compared, the keys
as a tree (flat, or grouped into modules by the one rule of
:class:`~ckpt_inspector.core.keytree.DottedKeys`), each row's totals, and what a status
means and how bad it is. Qt-free: the GUI's model only renders these rows.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.keytree import DottedKeys, KeyRow, roll_up
from ckpt_inspector.core.layouts import open_checkpoint
from ckpt_inspector.core.ops import diff as core_diff
from ckpt_inspector.core.ops.analysis import unreadable
from ckpt_inspector.core.ops.diff import (
    CHANGED,
    DTYPE,
    IDENTICAL,
    KIND,
    ONLY_A,
    ONLY_B,
    SHAPE,
    UNREADABLE,
    DiffResult,
    Entry,
    Side,
)
from ckpt_inspector.core.progress import CancelToken, Job, Progress
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.summary import totals
from ckpt_inspector.core.tree import Checkpoint

# the colour a group takes is its worst child's: first in this order
SEVERITY = (KIND, SHAPE, UNREADABLE, ONLY_A, ONLY_B, DTYPE, CHANGED, IDENTICAL)
RANK = {s: i for i, s in enumerate(SEVERITY)}
STATUS_HELP = {
    IDENTICAL: "the same bytes (or the same value) on both sides",
    CHANGED: "same shape and dtype, different values",
    DTYPE: "same shape, different dtype (values compared in float64)",
    SHAPE: "different shapes",
    KIND: "a tensor on one side, a value on the other",
    ONLY_A: "in A, not in B (removed)",
    ONLY_B: "in B, not in A (added)",
    UNREADABLE: "the data of one side could not be read",
}


# -- the merged key tree -----------------------------------------------------------------------
@dataclass(eq=False, slots=True)
class DiffNode(KeyRow):
    """A key of the comparison (``entry``), a group of dotted keys (``entry`` None), or
    both (a key that other keys extend). The totals cover the node and all below."""

    entry: Entry | None = None
    entries: int = 0
    changed: int = 0  # entries that are not identical
    worst: str = IDENTICAL
    elements_changed: int = 0
    max_abs: float | None = None  # the largest below
    rel_l2: float | None = None  # the largest below
    score: float | None = None  # the largest difference_score() below
    cosine: float | None = None  # the smallest below

    def tally(self) -> None:
        self._own()
        for c in self.children:
            self.entries += c.entries
            self.changed += c.changed
            self.elements_changed += c.elements_changed
            if RANK[c.worst] < RANK[self.worst]:
                self.worst = c.worst
            self.max_abs = _larger(self.max_abs, c.max_abs)
            self.rel_l2 = _larger(self.rel_l2, c.rel_l2)
            self.score = _larger(self.score, c.score)
            if c.cosine is not None and (self.cosine is None or c.cosine < self.cosine):
                self.cosine = c.cosine

    def _own(self) -> None:
        e = self.entry
        if e is None:
            return
        self.entries = 1
        self.changed = int(e.status != IDENTICAL)
        self.worst = e.status
        self.score = difference_score(e)
        if e.numbers is not None:
            self.elements_changed = e.numbers.changed
            self.max_abs = e.numbers.max_abs
            self.rel_l2 = e.numbers.rel_l2
            self.cosine = e.numbers.cosine


def _larger(x: float | None, y: float | None) -> float | None:
    return y if y is not None and (x is None or y > x) else x


def _taken(row: DiffNode) -> bool:
    return row.entry is not None


def build_tree(entries: list[Entry], grouped: bool) -> DiffNode:
    """The entries as rows: flat (one per key, in the order of the comparison) or grouped
    by the dots of their keys (``layer1.0.conv1.weight`` under layer1 > 0 > conv1)."""
    top = DiffNode("", "")
    if not grouped:
        for e in entries:
            top.add(DiffNode(e.key or "(root)", e.key, entry=e))
    else:
        rows = DottedKeys(DiffNode)
        for e in entries:
            parts = e.key.split(".")
            row = rows.place(top, parts, label=parts[-1] or "(root)", taken=_taken)
            row.entry, row.key = e, e.key  # the key as compared, even with empty parts
    roll_up(top)
    return top


def difference_score(e: Entry) -> float:
    """How different, for sorting by difference: the relative L2 difference (Entry.score),
    and above every number what differs in a way no number measures (a key missing on one
    side, a shape or kind changed, a value changed, unreadable data)."""
    if e.numbers is not None or e.status == IDENTICAL:
        return e.score()
    return math.inf


def side_text(side: Side | None) -> str:
    return side.describe() if side is not None else "—"


def status_text(d: DiffNode) -> str:
    if d.entry is not None and not d.children:
        return d.entry.status
    if not d.changed:
        return f"{d.entries:,} identical"
    return f"{d.changed:,} of {d.entries:,} changed"


def histogram_reason(e: Entry) -> str:
    """Why there is no histogram of A − B for this entry ("" when there is one)."""
    if e.status == ONLY_A:
        return "Only in A: there is nothing to subtract."
    if e.status == ONLY_B:
        return "Only in B: there is nothing to subtract."
    if not e.is_tensor or e.status == KIND:
        return "Not two tensors: their values are listed above."
    if e.status == UNREADABLE:
        return f"Not compared: {e.error}"
    ta, tb = e.a.tensor, e.b.tensor
    if ta.numel != tb.numel:
        return (f"Different numbers of elements ({ta.numel:,} and {tb.numel:,}): no element by "
                "element difference.")
    for t in (ta, tb):
        problem = unreadable(t)
        if problem:
            return problem
    if e.status == IDENTICAL:
        return "Identical: A − B is zero everywhere."
    if e.numbers is not None and not e.numbers.changed and not e.numbers.nan_mismatch:
        return "The same values: A − B is zero everywhere."
    return ""


# -- reading and comparing both files ----------------------------------------------------------
@dataclass
class Comparison:
    a: Checkpoint
    b: Checkpoint
    result: DiffResult
    grouped: DiffNode
    flat: DiffNode
    totals_a: dict[str, Any]
    totals_b: dict[str, Any]
    seconds: float
    verdicts: tuple[str, str] = ("", "")  # each file's security verdict (scan)

    def elements(self) -> tuple[int, int]:
        """(elements that changed, elements compared one to one)."""
        return self.result.elements_changed()


@dataclass(frozen=True)
class MatchOptions:
    """How keys are matched: the rules of ``ckpt-inspector diff`` (``--strip-prefix``,
    ``--exact``, ``--key-a``, ``--key-b``)."""

    rules: tuple[core_diff.PrefixRule, ...] = ()
    auto: bool = True
    key_a: str = ""
    key_b: str = ""


def compare_files(path_a: str, path_b: str, options: MatchOptions | None = None,
                  cancel: CancelToken | None = None) -> Job[Comparison]:
    """Read both files and compare them (a job for a worker; ``cancel`` stops it within a
    tensor); returns a :class:`Comparison` with both trees of the result built."""
    options = options or MatchOptions()
    start = time.perf_counter()
    yield Progress("reading A", detail=os.path.basename(path_a))
    a = open_checkpoint(path_a)
    yield Progress("reading B", detail=os.path.basename(path_b))
    b = open_checkpoint(path_b)
    try:
        result = yield from core_diff.diff(a, b, rules=list(options.rules),
                                           key_a=options.key_a or None,
                                           key_b=options.key_b or None, auto=options.auto,
                                           cancel=cancel)
    except KeyError as err:
        side = "A" if options.key_a and err.args[0] == options.key_a else "B"
        raise CheckpointError(f"{side} has no key {err.args[0]!r} to compare") from None
    yield Progress("arranging the keys")
    return Comparison(a, b, result, build_tree(result.entries, True),
                      build_tree(result.entries, False), totals(a), totals(b),
                      time.perf_counter() - start, (scan(a).verdict, scan(b).verdict))
