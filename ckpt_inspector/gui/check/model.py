"""The keys of a check as a Qt item model: columns, how each status looks (the comparison
tab's colours and badges), the status and key filter."""

from __future__ import annotations

from typing import Any, ClassVar

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QFont

from ckpt_inspector.core.keytree import natural_key
from ckpt_inspector.core.ops.check.report import (
    DTYPE,
    ERROR,
    FAILING,
    MISMATCHED,
    MISSING,
    STATUS_HELP,
    UNEXPECTED,
)
from ckpt_inspector.core.ops.check.rows import RANK, CheckNode, status_text
from ckpt_inspector.gui.html.check import STATUS_STYLE
from ckpt_inspector.gui.icons import badge_icon
from ckpt_inspector.gui.theme import brush
from ckpt_inspector.gui.tree.model import NodeTreeModel

COLUMNS = ("Key", "Status", "Checkpoint", "Model")
KEY, STATUS, CHECKPOINT, MODEL = range(len(COLUMNS))
COLUMN_HELP = {
    KEY: "A key of the model's state_dict or of the checkpoint's",
    STATUS: "What load_state_dict(strict=True) does with the key; groups count the keys "
            "below that make it fail",
    CHECKPOINT: "dtype[shape] in the checkpoint",
    MODEL: "dtype[shape] the model expects",
}

# status filters: (button text, statuses shown or None for all, tooltip)
FILTERS = (
    ("All", None, "Every key of the model and of the checkpoint"),
    ("Failing", FAILING, "Every key that makes strict loading fail"),
    ("Missing", frozenset({MISSING}), "Keys the model has and the checkpoint lacks"),
    ("Unexpected", frozenset({UNEXPECTED}), "Keys of the checkpoint the model has no place for"),
    ("Shape mismatch", frozenset({MISMATCHED, ERROR}),
     "Keys in both whose shapes differ (or that torch cannot copy)"),
    ("dtype", frozenset({DTYPE}), "Keys loaded with a cast to the model's dtype"),
)
ALL = 0


def status_icon(status: str) -> Any:
    _text, color, mark = STATUS_STYLE[status]
    return badge_icon(color, mark)


def _side(node: CheckNode, col: int) -> str:
    e = node.entry
    if e is None:
        return ""
    s = e.checkpoint if col == CHECKPOINT else e.model
    return s.text() if s is not None else "—"


class CheckModel(NodeTreeModel):
    """The keys of both sides as a tree (or a flat list) of :class:`CheckNode`."""

    COLUMNS = COLUMNS
    COLUMN_HELP = COLUMN_HELP
    _SORT_KEYS: ClassVar[dict[int, Any]] = {
        KEY: lambda d: natural_key(d.label),
        STATUS: lambda d: (RANK[d.worst], -d.failing),  # ascending: the worst first
        CHECKPOINT: lambda d: natural_key(_side(d, CHECKPOINT)),
        MODEL: lambda d: natural_key(_side(d, MODEL)),
    }

    def _style(self, d: CheckNode, col: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DecorationRole and col == KEY:
            return status_icon(d.worst)
        if role == Qt.ItemDataRole.ForegroundRole:
            if col in (KEY, STATUS):
                return brush(STATUS_STYLE[d.worst][0])
            if col in (CHECKPOINT, MODEL) and _side(d, col) == "—":
                return brush("faint")
        if role == Qt.ItemDataRole.FontRole and col == KEY and d.children:
            font = QFont()
            font.setBold(True)
            return font
        return None

    @staticmethod
    def _display(d: CheckNode, col: int) -> str:
        if col == KEY:
            return d.label
        if col == STATUS:
            return status_text(d)
        return _side(d, col)

    @staticmethod
    def _tooltip(d: CheckNode) -> str:
        lines = [d.key or "(root)"]
        e = d.entry
        if e is not None:
            lines.append(f"{e.status}: {STATUS_HELP[e.status]}")
            for name, s in (("checkpoint", e.checkpoint), ("model", e.model)):
                if s is not None:
                    lines.append(f"{name}: {s.text()}")
        if d.children:
            lines.append(f"{status_text(d)} below")
        return "\n".join(lines)


class CheckFilter(QSortFilterProxyModel):
    """Keys by status and by text; a match keeps its groups."""

    def __init__(self, parent: Any = None):
        super().__init__(parent)
        self.setRecursiveFilteringEnabled(True)
        self.statuses: frozenset[str] | None = None
        self.terms: list[str] = []

    @property
    def filtering(self) -> bool:
        return self.statuses is not None or bool(self.terms)

    def set_filter(self, statuses: frozenset[str] | None, text: str) -> None:
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

    def accepts(self, node: CheckNode) -> bool:
        e = node.entry
        if e is None:
            return False  # a group is shown when something below it is
        if self.statuses is not None and e.status not in self.statuses:
            return False
        key = e.key.lower()
        return all(t in key for t in self.terms)

    def filterAcceptsRow(self, row: int, parent: QModelIndex | QPersistentModelIndex) -> bool:
        if not self.filtering:
            return True
        node = parent.internalPointer() if parent.isValid() else self.sourceModel().node(parent)
        children = self.sourceModel().children_of(node)
        return 0 <= row < len(children) and self.accepts(children[row])

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        source = self.sourceModel()
        if source is not None:
            source.sort(column, order)
