"""The histogram and heatmap of a tensor, drawn with pyqtgraph.

Widgets only: they show a :class:`~ckpt_inspector.core.ops.stats.Histogram` or a
:class:`~ckpt_inspector.core.ops.slices.Heatmap` they are given and say what the user
asked to change (bins, log scale, symmetric colours) through signals; the tensor
view computes. pyqtgraph takes half a second to import, so this module is
imported ahead of time on a worker thread (see :func:`preload`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QPointF, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.ops.grid_axes import Axes
from ckpt_inspector.core.ops.histogram import Histogram
from ckpt_inspector.core.ops.slices import Heatmap
from ckpt_inspector.core.ops.stats import Stats, format_number
from ckpt_inspector.gui import theme

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False, background="w",
                    foreground="#374151")

MEAN_PEN = pg.mkPen("#dc2626", width=1, style=Qt.PenStyle.DashLine)
SEQUENTIAL = "viridis"
DIVERGING = "CET-D1"


def preload() -> bool:
    """Nothing: importing this module is the work (called on a worker thread)."""
    return True


def _theme_plot(canvas: pg.GraphicsView, *plots: pg.PlotItem) -> None:
    """Background, axes, ticks and labels in the current theme's colours."""
    canvas.setBackground(theme.color("plot_bg"))
    fg = theme.color("plot_fg")
    for plot in plots:
        for side in ("left", "bottom", "right", "top"):
            axis = plot.getAxis(side)
            axis.setPen(fg)
            axis.setTextPen(fg)


class ThemedNote:
    """A label whose text a function makes, made again in a new theme's colours (unless
    something else has been written there since)."""

    def __init__(self, label: QLabel):
        self.label = label
        self.make: Callable[[], str] | None = None
        self.text = ""

    def show(self, make: Callable[[], str]) -> None:
        self.make, self.text = make, make()
        self.label.setText(self.text)

    def retheme(self) -> None:
        if self.make is not None and self.label.text() == self.text:
            self.show(self.make)


def _bar(checkable: str, tip: str) -> QCheckBox:
    box = QCheckBox(checkable)
    box.setToolTip(tip)
    return box


class HistogramPanel(QWidget):
    bins_changed = Signal(int)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.log_box = _bar("Log counts", "Count axis on a log scale")
        self.log_box.toggled.connect(self._set_log)
        self.bins = QSpinBox()
        self.bins.setRange(2, 1000)
        self.bins.setValue(100)
        self.bins.setPrefix("bins ")
        self.bins.setKeyboardTracking(False)
        self.bins.setToolTip("Number of equal bins between the smallest and largest finite value")
        self.bins.valueChanged.connect(self.bins_changed)
        self.note = QLabel()
        self.note.setObjectName("histogramNote")
        self.note.setTextFormat(Qt.TextFormat.RichText)
        self.themed_note = ThemedNote(self.note)
        top = QHBoxLayout()
        top.setContentsMargins(4, 2, 4, 0)
        top.addWidget(self.log_box)
        top.addWidget(self.bins)
        top.addSpacing(12)
        top.addWidget(self.note, 1)

        self.plot = pg.PlotWidget()
        self.plot.setObjectName("histogramPlot")
        self.plot.setMenuEnabled(False)
        self.plot.showGrid(x=False, y=True, alpha=0.15)
        self.plot.setLabel("left", "count")
        self.plot.getPlotItem().getViewBox().setMouseEnabled(x=True, y=False)
        for side in ("left", "bottom"):  # plain numbers: "x0.001" under the axis confuses
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.curve = pg.PlotDataItem(stepMode="center", fillLevel=0)
        self.plot.addItem(self.curve)
        self.mean_line = pg.InfiniteLine(angle=90, pen=MEAN_PEN)
        self.mean_line.setToolTip("mean")
        self.plot.addItem(self.mean_line)
        self.zero_line = pg.InfiniteLine(angle=90)
        self.plot.addItem(self.zero_line)
        self._apply_theme()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        self.histogram: Histogram | None = None
        self.stats: Stats | None = None

    def _apply_theme(self) -> None:
        _theme_plot(self.plot, self.plot.getPlotItem())
        bar = QColor(theme.color("accent"))
        self.curve.setPen(pg.mkPen(bar, width=1.5))
        bar.setAlpha(70)
        self.curve.setFillBrush(pg.mkBrush(bar))
        self.zero_line.setPen(pg.mkPen(theme.color("plot_zero"), width=1))

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if theme.is_palette_change(event):
            self._apply_theme()
            self.themed_note.retheme()

    def show_histogram(self, h: Histogram, stats: Stats) -> None:
        self.histogram, self.stats = h, stats
        self._draw()
        self.themed_note.show(lambda: self._note(h, stats))
        self.note.setToolTip(f"{h.counts.size} bins from {format_number(float(h.edges[0]))} "
                             f"to {format_number(float(h.edges[-1]))}")

    @staticmethod
    def _note(h: Histogram, stats: Stats) -> str:
        notes = []
        total = int(h.counts.sum())
        if h.sampled is not None:
            notes.append(f"<b>sample</b> of {h.sampled:,} evenly spread elements "
                         f"(of {stats.numel:,})")
        else:
            finite = " finite" if stats.kind not in ("int", "bool") else ""
            notes.append(f"all {total:,}{finite} values")
        special = [(n, w) for n, w in ((h.nan, "NaN"), (h.posinf, "+inf"), (h.neginf, "−inf"))
                   if n]
        if special:
            notes.append(theme.span("danger", "<b>not shown:</b> "
                                    + ", ".join(f"{n:,} {w}" for n, w in special)))
        return " · ".join(notes)

    def _draw(self) -> None:
        h, stats = self.histogram, self.stats
        if h is None or stats is None:
            return
        counts = h.counts.astype(np.float64)
        log = self.log_box.isChecked()
        if log:  # empty bins sit on the axis, one decade under a single count
            counts = np.log10(np.where(counts > 0, counts, 0.1))
            self.curve.setFillLevel(-1.0)
            self.plot.setLabel("left", "log₁₀ count")
        else:
            self.curve.setFillLevel(0)
            self.plot.setLabel("left", "count")
        self.curve.setData(h.edges, counts)
        self.plot.setLabel("bottom", "value" if stats.kind != "complex magnitude" else "|value|")
        if stats.mean is not None and math.isfinite(stats.mean):
            self.mean_line.setPos(stats.mean)
            self.mean_line.show()
        else:
            self.mean_line.hide()
        lo, hi = float(h.edges[0]), float(h.edges[-1])
        self.zero_line.setVisible(lo < 0 < hi)
        self.zero_line.setPos(0)
        self.plot.enableAutoRange()

    def _set_log(self, _on: bool) -> None:
        self._draw()

    def clear(self) -> None:
        self.histogram = self.stats = None
        self.curve.setData([], [])
        self.mean_line.hide()
        self.zero_line.hide()
        self.note.setText("")


class HeatmapPanel(QWidget):
    """A picture of a 2-D slice with a colour bar, zoom and pan, and the value under the
    cursor; ``hovered(row, col)`` gives the pixel so the owner can name the element."""

    symmetric_changed = Signal(bool)
    kernels_changed = Signal(bool)
    reduce_changed = Signal(str)
    resized = Signal()  # the picture's room changed shape (a kernel grid may lay out anew)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.symmetric = _bar("Symmetric colours", "Centre the colour map on zero "
                              "(blue negative, red positive)")
        self.symmetric.setChecked(True)
        self.symmetric.toggled.connect(self._recolour)
        self.symmetric.toggled.connect(self.symmetric_changed)
        self.kernels = _bar("Kernel grid", "Conv weights [out, in, kh, kw] as a grid of "
                            "kh×kw kernels: one row per output channel")
        self.kernels.toggled.connect(self.kernels_changed)
        self.reduce = QComboBox()
        self.reduce.addItem("pixel = block mean", "mean")
        self.reduce.addItem("pixel = block max |value|", "absmax")
        self.reduce.setToolTip("A downsampled pixel stands for a block of values: their mean, "
                               "or their largest magnitude (keeps outliers visible)")
        self.reduce.currentIndexChanged.connect(
            lambda _i: self.reduce_changed.emit(self.reduce.currentData()))
        self.reduce.hide()
        self.note = QLabel()
        self.note.setObjectName("heatmapNote")
        self.themed_note = ThemedNote(self.note)
        top = QHBoxLayout()
        top.setContentsMargins(4, 2, 4, 0)
        top.addWidget(self.symmetric)
        top.addWidget(self.kernels)
        top.addWidget(self.reduce)
        top.addSpacing(12)
        top.addWidget(self.note, 1)

        self.canvas = pg.GraphicsLayoutWidget()
        self.canvas.setObjectName("heatmapCanvas")
        self.plot = self.canvas.addPlot()
        self.plot.setMenuEnabled(False)
        self.plot.invertY(True)
        for side in ("left", "bottom"):
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.image = pg.ImageItem()
        self.plot.addItem(self.image)
        self.marks = pg.ImageItem()  # NaN and inf, painted over the colours
        self.marks.setZValue(1)
        self.plot.addItem(self.marks)
        self.bar = pg.ColorBarItem(colorMap=pg.colormap.get(DIVERGING), interactive=False,
                                   width=14)
        self.bar.setImageItem(self.image, insert_in=self.plot)
        self._apply_theme()
        self.hover = QLabel(" ")
        self.hover.setObjectName("heatmapHover")
        self.hover.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.hover)
        self.heatmap: Heatmap | None = None
        self.describe = None  # callable (row, col) -> text, set by the owner
        self.canvas.scene().sigMouseMoved.connect(self._moved)

    def _apply_theme(self) -> None:
        _theme_plot(self.canvas, self.plot, self.bar)
        self.plot.getViewBox().setBackgroundColor(theme.color("plot_view_bg"))

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if theme.is_palette_change(event):
            self._apply_theme()
            self.themed_note.retheme()

    def show_heatmap(self, hm: Heatmap, note: str = "") -> None:
        self.heatmap = hm
        rect = (0, 0, hm.image.shape[1] * hm.factor[1], hm.image.shape[0] * hm.factor[0])
        self.image.setImage(hm.image, autoLevels=False)
        self.image.setRect(*rect)
        special = self._marks(hm)
        self.reduce.setVisible(hm.factor != (1, 1))
        self._recolour()
        self._frame(hm)
        parts = [note] if note else []
        if hm.factor != (1, 1):
            what = "largest |value|" if hm.reduce == "absmax" else "mean"
            parts.append(f"downsampled: each pixel is the {what} of {hm.factor[0]}×"
                         f"{hm.factor[1]} values")
        self.themed_note.show(lambda: " · ".join([*parts, *special()]))
        self.hover.setText("Move the pointer over the picture to read values; drag to pan, "
                           "wheel to zoom")

    def _frame(self, hm: Heatmap) -> None:
        """Axes that say what they are, ticked; the picture fills the view. A kernel grid
        keeps square pixels (its layout already has the view's shape: see
        :func:`~ckpt_inspector.core.ops.grid_axes.grid_across`) and is ticked in channels;
        a matrix is stretched to the view and ticked in its indices, and cannot be panned
        away from."""
        frame = hm.frame or Axes(hm.rows, hm.cols)
        self.plot.setLabel("left", frame.left)
        self.plot.setLabel("bottom", frame.bottom)
        for side, ticks, values in (("left", frame.left_ticks, frame.left_values),
                                    ("bottom", frame.bottom_ticks, True)):
            axis = self.plot.getAxis(side)
            axis.setTicks(ticks)  # None: the plot's own, in the tensor's indices
            axis.setStyle(showValues=values)
        h, w = hm.image.shape[0] * hm.factor[0], hm.image.shape[1] * hm.factor[1]
        box = self.plot.getViewBox()
        grid = hm.layout is not None
        box.setLimits(xMin=None, xMax=None, yMin=None, yMax=None)
        self.plot.setAspectLocked(grid)
        if not grid:
            box.setLimits(xMin=0, xMax=w, yMin=0, yMax=h)
        self.plot.autoRange(padding=0.01 if grid else 0.0)

    def view_aspect(self) -> float:
        """How many times wider than high the picture's room is (1 before it is shown)."""
        box = self.plot.getViewBox().sceneBoundingRect()
        if box.width() > 10 and box.height() > 10:
            return box.width() / box.height()
        # not laid out yet: the canvas less the axes and the colour bar
        w, h = self.canvas.width() - 140, self.canvas.height() - 50
        return w / h if w > 10 and h > 10 else 1.0

    def resizeEvent(self, event: QEvent) -> None:
        super().resizeEvent(event)
        self.resized.emit()

    def _marks(self, hm: Heatmap) -> Callable[[], list[str]]:
        """Paint NaN magenta and ±inf black over the picture (not the gaps of a kernel grid);
        returns what makes the words for the note."""
        img = hm.image
        nan = np.isnan(img)
        if hm.layout is not None:  # gaps between kernels are NaN by construction
            nan[:] = False
        inf = np.isinf(img)
        if not nan.any() and not inf.any():
            self.marks.clear()
            return list
        rgba = np.zeros((*img.shape, 4), dtype=np.uint8)
        rgba[nan] = (217, 70, 239, 255)
        rgba[inf] = (17, 24, 39, 255)
        self.marks.setImage(rgba, autoLevels=False, levels=(0, 255))
        self.marks.setRect(0, 0, img.shape[1] * hm.factor[1], img.shape[0] * hm.factor[0])
        has_nan, has_inf = bool(nan.any()), bool(inf.any())

        def words() -> list[str]:
            nan_word = [theme.span("nan", "NaN", bold=True) + " magenta"] if has_nan else []
            inf_word = ["<b>±inf</b> black"] if has_inf else []
            return [", ".join(nan_word + inf_word)]

        return words

    def _recolour(self) -> None:
        hm = self.heatmap
        if hm is None:
            return
        finite = hm.image[np.isfinite(hm.image)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        symmetric = self.symmetric.isChecked() and hm.reduce != "absmax"
        if hm.reduce == "absmax":
            lo = 0.0
        if symmetric:
            m = max(abs(lo), abs(hi)) or 1.0
            lo, hi = -m, m
        elif lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        self.bar.setColorMap(pg.colormap.get(DIVERGING if symmetric else SEQUENTIAL))
        self.bar.setLevels((lo, hi))

    def _moved(self, pos: QPointF) -> None:
        hm = self.heatmap
        if hm is None or not self.plot.sceneBoundingRect().contains(pos):
            return
        p = self.plot.getViewBox().mapSceneToView(pos)
        col, row = math.floor(p.x()), math.floor(p.y())
        rows = hm.image.shape[0] * hm.factor[0]
        cols = hm.image.shape[1] * hm.factor[1]
        if not (0 <= row < rows and 0 <= col < cols):
            self.hover.setText(" ")
            return
        if self.describe is not None:
            self.hover.setText(self.describe(row, col))

    def clear(self) -> None:
        self.heatmap = None
        self.image.clear()
        self.marks.clear()
        self.note.setText("")
        self.hover.setText(" ")
