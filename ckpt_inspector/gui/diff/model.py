"""The keys of a comparison as a Qt item model: columns, how each status looks, sorting
by difference, and the status and key filter.
"""

from __future__ import annotations

from html import unescape
from typing import Any, ClassVar

from PySide6.QtCore import (
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QFont

from ckpt_inspector.core.keytree import natural_key
from ckpt_inspector.core.ops import diff as core_diff
from ckpt_inspector.core.ops.diff import (
    IDENTICAL,
    KIND,
    ONLY_A,
    ONLY_B,
    SHAPE,
    STATUSES,
    Entry,
)
from ckpt_inspector.core.ops.difftree import (
    RANK,
    STATUS_HELP,
    DiffNode,
    side_text,
    status_text,
)
from ckpt_inspector.core.ops.stats import format_number
from ckpt_inspector.core.ops.tensor_diff import format_cosine
from ckpt_inspector.gui.html.diff import STATUS_STYLE, percent
from ckpt_inspector.gui.icons import badge_icon
from ckpt_inspector.gui.theme import brush
from ckpt_inspector.gui.tree.model import NodeTreeModel

COLUMNS = ("Key", "Status", "A", "B", "max |A−B|", "rel L2", "cosine", "changed")
KEY, STATUS, A, B, MAX_ABS, REL_L2, COSINE, CHANGED_COL = range(len(COLUMNS))
NUMERIC = (MAX_ABS, REL_L2, COSINE, CHANGED_COL)
COLUMN_HELP = {
    KEY: "The key both files share (after the prefix rule, if one was used)",
    STATUS: "What happened to the key from A to B; groups count the keys below that differ",
    A: "dtype[shape] of a tensor in A, or its value",
    B: "dtype[shape] of a tensor in B, or its value",
    MAX_ABS: "Largest |A − B| over the elements (groups: the largest below)",
    REL_L2: "Relative L2 difference ||A − B|| / max(||A||, ||B||): 0 the same, 1 unrelated "
            "or from zero, 2 opposite (groups: the largest below). Sorted "
            "by difference: keys missing on one side or whose shape changed come first",
    COSINE: "Cosine similarity of A and B as vectors (groups: the smallest below)",
    CHANGED_COL: "Elements whose values differ (groups: the sum below)",
}

# status filters: (button text, statuses shown or None for all, tooltip)
FILTERS = (
    ("All", None, "Every key of both files"),
    ("Changed", frozenset(STATUSES) - {IDENTICAL}, "Every key that is not identical"),
    ("Missing", frozenset({ONLY_A, ONLY_B}), "Keys in only one of the files"),
    ("Shape mismatch", frozenset({SHAPE, KIND}),
     "Keys whose shapes differ (or a tensor on one side and a value on the other)"),
)
ALL, CHANGED_ONLY, MISSING, SHAPES = range(len(FILTERS))


def status_icon(status: str) -> Any:
    _text, color, mark = STATUS_STYLE[status]
    return badge_icon(color, mark)


class DiffModel(NodeTreeModel):
    """The merged keys of two files as a tree (or a flat list) of :class:`DiffNode`."""

    COLUMNS = COLUMNS
    COLUMN_HELP = COLUMN_HELP
    NUMERIC = NUMERIC
    _SORT_KEYS: ClassVar[dict[int, Any]] = {
        KEY: lambda d: natural_key(d.label),
        STATUS: lambda d: (RANK[d.worst], -d.changed),
        A: lambda d: natural_key(side_text(d.entry.a)) if d.entry else (),
        B: lambda d: natural_key(side_text(d.entry.b)) if d.entry else (),
        # no number sorts under every number; ties: the worse status first when descending
        MAX_ABS: lambda d: (-1.0 if d.max_abs is None else d.max_abs, -RANK[d.worst]),
        REL_L2: lambda d: (-1.0 if d.score is None else d.score, -RANK[d.worst]),
        COSINE: lambda d: (2.0 if d.cosine is None else d.cosine, RANK[d.worst]),
        CHANGED_COL: lambda d: (d.elements_changed, -RANK[d.worst]),
    }

    def _style(self, d: DiffNode, col: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DecorationRole and col == KEY:
            return status_icon(d.worst)
        if role == Qt.ItemDataRole.ForegroundRole:
            if col in (KEY, STATUS):
                return brush(STATUS_STYLE[d.worst][0])
            if d.entry is None and col in NUMERIC:
                return brush("faint")  # a group's figure is its children's, not its own
            if col in (A, B) and d.entry is not None:
                side = d.entry.a if col == A else d.entry.b
                return brush("faint") if side is None else None
        if role == Qt.ItemDataRole.FontRole and col == KEY and d.children:
            font = QFont()
            font.setBold(True)
            return font
        return None

    @staticmethod
    def _display(d: DiffNode, col: int) -> str:
        e = d.entry
        if col == KEY:
            return d.label
        if col == STATUS:
            return status_text(d)
        if col in (A, B):
            if e is None:
                return ""
            return side_text(e.a if col == A else e.b)
        if col == MAX_ABS:
            return format_number(d.max_abs, 4) if d.max_abs is not None else ""
        if col == REL_L2:
            return format_number(d.rel_l2, 4) if d.rel_l2 is not None else ""
        if col == COSINE:
            return format_cosine(d.cosine, 4) if d.cosine is not None else ""
        if col == CHANGED_COL:
            if e is not None and not d.children:
                return f"{e.numbers.changed:,}" if e.numbers is not None else ""
            return f"{d.elements_changed:,}" if d.elements_changed else ""
        return ""

    @staticmethod
    def _tooltip(d: DiffNode) -> str:
        e = d.entry
        lines = [d.key or "(root)"]
        if e is not None:
            lines.append(f"{e.status}: {STATUS_HELP[e.status]}")
            for name, side in (("A", e.a), ("B", e.b)):
                if side is not None:
                    where = f" (key {side.key} in the file)" if side.key != e.key else ""
                    lines.append(f"{name}: {side.describe()}{where}")
            if e.numbers is not None:
                n = e.numbers
                lines.append(f"{n.changed:,} of {n.numel:,} elements changed "
                             f"({unescape(percent(n.changed, n.numel))})")
                lines.append(core_diff.describe_numbers(n))
            if e.error:
                lines.append(e.error)
        if d.children:
            lines.append(f"{status_text(d)} below; {d.elements_changed:,} elements changed")
        return "\n".join(lines)


class DiffFilter(QSortFilterProxyModel):
    """Keys by status and by text; a match keeps its groups (recursive filtering). Sorting
    is the source model's (one Python pass per level)."""

    def __init__(self, parent: Any = None):
        super().__init__(parent)
        self.setRecursiveFilteringEnabled(True)
        self.statuses: frozenset[str] | None = None
        self.terms: list[str] = []

    @property
    def filtering(self) -> bool:
        return self.statuses is not None or bool(self.terms)

    def set_filter(self, statuses: frozenset[str] | None, text: str) -> None:
        """Show keys with one of ``statuses`` (None: any) containing every word of ``text``."""
        terms = text.lower().split()
        if statuses == self.statuses and terms == self.terms:
            return
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9
            self.beginFilterChange()
            self.statuses, self.terms = statuses, terms
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self.statuses, self.terms = statuses, terms
            self.invalidateRowsFilter()

    def accepts(self, entry: Entry | None) -> bool:
        if entry is None:
            return False  # a group is shown when something below it is
        if self.statuses is not None and entry.status not in self.statuses:
            return False
        key = entry.key.lower()
        return all(t in key for t in self.terms)

    def filterAcceptsRow(self, row: int, parent: QModelIndex | QPersistentModelIndex) -> bool:
        if not self.filtering:
            return True
        node = parent.internalPointer() if parent.isValid() else self.sourceModel().node(parent)
        children = self.sourceModel().children_of(node)
        return 0 <= row < len(children) and self.accepts(children[row].entry)

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        source = self.sourceModel()
        if source is not None:
            source.sort(column, order)
