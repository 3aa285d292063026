"""A check's keys as the window shows them: one row per key of either side, flat or grouped
into modules by the one rule of :class:`~ckpt_inspector.core.keytree.DottedKeys`, each
group with its counts and its worst key's status. Qt-free: the window only renders them."""

from __future__ import annotations

from dataclasses import dataclass, field

from ckpt_inspector.core.keytree import DottedKeys, KeyRow, roll_up
from ckpt_inspector.core.ops.check import report as rp
from ckpt_inspector.core.ops.check.report import FAILING, OK, SEVERITY

RANK = {s: i for i, s in enumerate(SEVERITY)}


@dataclass(eq=False, slots=True)
class CheckNode(KeyRow):
    """A key (``row`` set), a group of dotted keys (``row`` None), or both. The totals
    cover the node and all below."""

    entry: rp.KeyRow | None = None
    keys: int = 0
    failing: int = 0  # keys below that make strict loading fail
    worst: str = OK
    counts: dict[str, int] = field(default_factory=dict)

    def tally(self) -> None:
        if self.entry is not None:
            self.keys = 1
            self.failing = int(self.entry.status in FAILING)
            self.worst = self.entry.status
            self.counts = {self.entry.status: 1}
        for c in self.children:
            self.keys += c.keys
            self.failing += c.failing
            if RANK[c.worst] < RANK[self.worst]:
                self.worst = c.worst
            for status, n in c.counts.items():
                self.counts[status] = self.counts.get(status, 0) + n


def _taken(row: CheckNode) -> bool:
    return row.entry is not None


def build_tree(rows: list[rp.KeyRow], grouped: bool) -> CheckNode:
    """The rows flat (in the report's order: the model's keys, then the checkpoint's
    others) or grouped by the dots of their keys."""
    top = CheckNode("", "")
    if not grouped:
        for r in rows:
            top.add(CheckNode(r.key or "(root)", r.key, entry=r))
    else:
        dotted = DottedKeys(CheckNode)
        for r in rows:
            parts = r.key.split(".")
            node = dotted.place(top, parts, label=parts[-1] or "(root)", taken=_taken)
            node.entry, node.key = r, r.key
    roll_up(top)
    return top


def status_text(node: CheckNode) -> str:
    """A key's status, or what a group holds ("3 of 12 fail")."""
    if node.entry is not None and not node.children:
        return node.entry.status
    if not node.failing:
        return f"{node.keys:,} load"
    return f"{node.failing:,} of {node.keys:,} fail"
