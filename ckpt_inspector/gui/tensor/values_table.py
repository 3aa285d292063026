"""The values of a 2-D slice of a tensor as a table.

The model reads a cell only when the view paints it (the slice is a view of the
memory-mapped file), so a table of millions of rows opens at once. Copy puts
the selection on the clipboard as tab-separated text.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.ops.slices import TensorSlice, format_cell
from ckpt_inspector.gui.theme import span

# Qt adds up row heights in an int of pixels: past ~2**31 px a view misbehaves (minutes of
# layout). Long vectors wrap into rows of 10, 100, ... values; taller slices are cut.
MAX_ROWS = 10_000_000
COPY_LIMIT = 1_000_000  # cells


ROW_WIDTHS = (1, 2, 4, 5, 8, 10, 20, 50, 100)  # values a row of a vector: easy row starts


def wrap_width(n: int, fit: int = 1) -> int:
    """Values per row for a vector of ``n``: as many of :data:`ROW_WIDTHS` as ``fit`` on
    screen (never more than ``n``), and a power of ten past :data:`MAX_ROWS` rows."""
    width = 1
    while n > MAX_ROWS * width:
        width *= 10
    fitting = max(w for w in ROW_WIDTHS if w <= max(1, min(fit, n)))
    return max(width, fitting)

Index = QModelIndex | QPersistentModelIndex


class ValuesModel(QAbstractTableModel):
    def __init__(self, sl: TensorSlice | None = None, parent: Any = None):
        super().__init__(parent)
        self.slice = sl
        self.width = 1  # values per row when a vector is wrapped
        self.cut = False  # rows beyond MAX_ROWS are not shown
        self.fit = 1  # columns the view has room for

    def set_slice(self, sl: TensorSlice | None) -> None:
        self.beginResetModel()
        self.slice = sl
        vector = sl is not None and sl.dims[1] is None
        self.width = wrap_width(sl.shape[0], self.fit) if vector else 1
        self.cut = sl is not None and not vector and sl.shape[0] > MAX_ROWS
        self.endResetModel()

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        if parent.isValid() or self.slice is None:
            return 0
        return min(-(-self.slice.shape[0] // self.width), MAX_ROWS)

    def columnCount(self, parent: Index = QModelIndex()) -> int:
        if parent.isValid() or self.slice is None:
            return 0
        return self.width if self.width > 1 else min(self.slice.shape[1], MAX_ROWS)

    def cell(self, row: int, col: int) -> tuple[int, int] | None:
        """The slice element behind a table cell (None past the end of a wrapped vector)."""
        if self.width == 1:
            return row, col
        i = row * self.width + col
        return (i, 0) if self.slice is not None and i < self.slice.shape[0] else None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        sl = self.slice
        if sl is None or not index.isValid():
            return None
        at = self.cell(index.row(), index.column())
        if at is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return format_cell(sl.value(*at))
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            text = repr(sl.value(*at))
            if self.width > 1:
                text = f"[{at[0]:,}] = {text}"
            if sl.info.quantization:
                text += f"  (stored integer {sl.raw(*at)})"
            return text
        return None

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role != Qt.ItemDataRole.DisplayRole or self.slice is None:
            return None
        if self.width > 1:  # rows start at multiples of the width; columns add to them
            return (f"{section * self.width:,}" if orientation == Qt.Orientation.Vertical
                    else f"+{section}")
        dim = self.slice.dims[0 if orientation == Qt.Orientation.Vertical else 1]
        if dim is None and orientation == Qt.Orientation.Horizontal:
            return "value"
        return str(section)

    def text(self, rows: list[int], cols: list[int]) -> str:
        """Tab-separated cells of these rows and columns."""
        sl = self.slice
        assert sl is not None
        out = []
        for r in rows:
            cells = (self.cell(r, c) for c in cols)
            out.append("\t".join(format_cell(sl.value(*at)) for at in cells if at is not None))
        return "\n".join(out)


class ValuesPanel(QWidget):
    export_requested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = ValuesModel(parent=self)
        self.table = QTableView()
        self.table.setObjectName("valuesTable")
        self.table.setModel(self.model)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ContiguousSelection)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        for header in (self.table.verticalHeader(), self.table.horizontalHeader()):
            header.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.verticalHeader().setDefaultSectionSize(
            self.table.fontMetrics().height() + 6)
        self.table.horizontalHeader().setDefaultSectionSize(
            self.table.fontMetrics().horizontalAdvance("-0.000123456") + 14)
        copy = QAction("Copy", self.table)
        copy.setShortcut(QKeySequence.StandardKey.Copy)
        copy.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        copy.triggered.connect(self.copy)
        self.table.addAction(copy)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)

        self.note = QLabel()
        self.note.setObjectName("valuesNote")
        self._note = ""  # the note of the slice shown, before the wrapping is said
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the selected cells as tab-separated text (Ctrl+C)")
        self.copy_button.clicked.connect(self.copy)
        self.export_button = QPushButton("Save as .npy…")
        self.export_button.setObjectName("saveNpyButton")
        self.export_button.setToolTip("Save the whole tensor as a NumPy .npy file")
        self.export_button.clicked.connect(self.export_requested)
        top = QHBoxLayout()
        top.setContentsMargins(4, 2, 4, 0)
        top.addWidget(self.note, 1)
        top.addWidget(self.copy_button)
        top.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)

    def show_slice(self, sl: TensorSlice | None, note: str = "") -> None:
        self.model.fit = self._columns_that_fit(sl.shape[0] if sl is not None else 1)
        self.model.set_slice(sl)
        self._note = note
        if self.model.width > 1:
            note += f", {self.model.width} per row"
        if self.model.cut:
            note += f" (the first {MAX_ROWS:,} rows shown)"
        self.note.setText(note)

    def _columns_that_fit(self, n: int) -> int:
        """How many value columns the table shows without scrolling sideways, its row
        headers counting up to ``n``."""
        starts = self.table.fontMetrics().horizontalAdvance(f"{n:,}") + 16
        room = self.table.width() - starts - \
            self.table.verticalScrollBar().sizeHint().width() - 4
        return max(1, room // self.table.horizontalHeader().defaultSectionSize())

    def resizeEvent(self, event: Any) -> None:
        """A vector is wrapped into as many columns as the panel has room for."""
        super().resizeEvent(event)
        sl = self.model.slice
        if sl is not None and sl.dims[1] is None and \
                wrap_width(sl.shape[0], self._columns_that_fit(sl.shape[0])) != self.model.width:
            self.show_slice(sl, self._note)
        self.copy_button.setEnabled(sl is not None)
        self.export_button.setEnabled(sl is not None)

    def copy(self) -> str:
        ranges = self.table.selectionModel().selection()
        if self.model.slice is None or ranges.isEmpty():
            return ""
        r = ranges[0]
        rows = list(range(r.top(), r.bottom() + 1))
        cols = list(range(r.left(), r.right() + 1))
        if len(rows) * len(cols) > COPY_LIMIT:
            self.note.setText(span("danger", f"Select at most {COPY_LIMIT:,} cells to copy"))
            return ""
        text = self.model.text(rows, cols)
        QGuiApplication.clipboard().setText(text)
        return text
