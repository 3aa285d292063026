"""Which slice of an N-D tensor is shown (:class:`SliceBar`: two axes, the index along the
others) and how an element of it is named under the pointer."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QWidget,
)

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.ops.slices import (
    Heatmap,
    TensorSlice,
    format_cell,
)
from ckpt_inspector.core.tree import TensorInfo


class SliceBar(QWidget):
    """Which two axes of an N-D tensor are shown, and the index along the others."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.rows = QComboBox()
        self.cols = QComboBox()
        for box in (self.rows, self.cols):
            box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.rows.setToolTip("The dimension shown down the rows")
        self.cols.setToolTip("The dimension shown across the columns")
        self.layout_ = QHBoxLayout(self)
        self.layout_.setContentsMargins(4, 0, 4, 0)
        self.spins: dict[int, QSpinBox] = {}
        self.shape: tuple[int, ...] = ()
        self.rows.currentIndexChanged.connect(self._axes_changed)
        self.cols.currentIndexChanged.connect(self._axes_changed)
        self._quiet = False

    def set_shape(self, shape: tuple[int, ...]) -> None:
        self._quiet = True
        self.shape = shape
        while self.layout_.count():
            item = self.layout_.takeAt(0)
            if item.widget() is not None and item.widget() not in (self.rows, self.cols):
                item.widget().deleteLater()
        self.spins = {}
        self.rows.clear()
        self.cols.clear()
        nd = len(shape)
        self.setVisible(nd >= 2)
        if nd < 2:
            self._quiet = False
            return
        for d, size in enumerate(shape):
            self.rows.addItem(f"dim {d} ({size:,})", d)
            self.cols.addItem(f"dim {d} ({size:,})", d)
        self.rows.setCurrentIndex(nd - 2)
        self.cols.setCurrentIndex(nd - 1)
        self.layout_.addWidget(QLabel("rows"))
        self.layout_.addWidget(self.rows)
        self.layout_.addWidget(QLabel("columns"))
        self.layout_.addWidget(self.cols)
        for d, size in enumerate(shape):
            spin = QSpinBox()
            spin.setRange(0, max(size - 1, 0))
            spin.setPrefix(f"dim {d} = ")
            spin.setToolTip(f"Index along dim {d} (0 to {size - 1:,})")
            spin.setKeyboardTracking(False)
            spin.valueChanged.connect(lambda _v: None if self._quiet else self.changed.emit())
            self.spins[d] = spin
            self.layout_.addWidget(spin)
        self.layout_.addStretch(1)
        self._quiet = False
        self._axes_changed()

    def _axes_changed(self) -> None:
        if self._quiet or len(self.shape) < 2:
            return
        a, b = self.axes()
        if a == b:  # keep two different axes: move the other one out of the way
            other = self.cols if self.sender() is self.rows else self.rows
            self._quiet = True
            other.setCurrentIndex(next(d for d in range(len(self.shape)) if d != a))
            self._quiet = False
            a, b = self.axes()
        for d, spin in self.spins.items():
            spin.setVisible(d not in (a, b))
        self.changed.emit()

    def axes(self) -> tuple[int, int]:
        if len(self.shape) < 2:
            return (0, 1)
        return int(self.rows.currentData()), int(self.cols.currentData())

    def index(self) -> dict[int, int]:
        a, b = self.axes()
        return {d: s.value() for d, s in self.spins.items() if d not in (a, b)}



def describe_pixel(info: TensorInfo | None, hm: Heatmap | None, values: TensorSlice | None,
                   axes: tuple[int, int], index: dict[int, int], row: int, col: int) -> str:
    """The element under the pointer on a heatmap: its index and value (or the block it
    averages); ``values`` is the slice the values table shows."""
    if info is None or hm is None:
        return ""
    try:
        if hm.layout is not None:
            at = hm.kernel_at(row, col)
            if at is None:
                return " "
            sl = TensorSlice(info, (2, 3), {0: at[0], 1: at[1]})
            return f"[{', '.join(map(str, at))}] = {format_cell(sl.value(at[2], at[3]))}"
        fr, fc = hm.factor
        value = hm.image[row // fr, col // fc]
        strip = len(info.shape) <= 1
        if (fr, fc) == (1, 1):
            if values is None:
                return ""
            exact = values.value(col, 0) if strip else values.value(row, col)
            return f"{element_text(info, axes, index, row, col)} = {format_cell(exact)}"
        r0, c0 = row // fr * fr, col // fc * fc
        where = (f"[{c0}:{c0 + fc}]" if strip else
                 f"rows {r0}–{r0 + fr - 1}, columns {c0}–{c0 + fc - 1}")
        return f"{where}: mean {format_cell(float(value))}"
    except (IndexError, CheckpointError):
        return " "


def element_text(info: TensorInfo, axes: tuple[int, int], index: dict[int, int], row: int,
                 col: int) -> str:
    """The full index of the element at (row, col) of the slice shown: ``[0, 3, 5]``."""
    nd = len(info.shape)
    if nd == 0:
        return "value"
    if nd == 1:
        return f"[{col}]"
    a, b = axes
    index = dict(index)
    index[a], index[b] = row, col
    return "[" + ", ".join(str(index[d]) for d in range(nd)) + "]"
