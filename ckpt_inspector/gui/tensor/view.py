"""What is inside the selected tensor: statistics, histogram, heatmap and values.

Selecting a tensor cancels whatever was being computed for the previous one and
starts the statistics and histogram on a worker (on the CPU with numpy, or, for
another device from the device picker, in a child process where torch puts the
chunks on that device). The heatmap is computed when its tab is shown. Results
are cached per tensor while the file is open, so going back is instant.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable
from html import escape
from typing import Any

from PySide6.QtCore import QEvent, Qt, QTimer, QUrl, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QStackedWidget,
    QTabWidget,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.ops.analysis import auto_bins, unreadable
from ckpt_inspector.core.ops.slices import (
    MAX_SIDE,
    Heatmap,
    TensorSlice,
    heatmap,
    save_npy,
)
from ckpt_inspector.core.ops.stats import Stats
from ckpt_inspector.core.progress import Progress
from ckpt_inspector.core.summary import human_bytes
from ckpt_inspector.core.tree import TensorInfo
from ckpt_inspector.gui.analysis import Analysis
from ckpt_inspector.gui.errors import ErrorReporter
from ckpt_inspector.gui.jobs import JobRunner, Task
from ckpt_inspector.gui.remote import is_url, stem_of
from ckpt_inspector.gui.tensor.lora import UpdateSwitch
from ckpt_inspector.gui.tensor.preload import plots_ready, preload_plots, preload_when_idle
from ckpt_inspector.gui.tensor.slicing import SliceBar, describe_pixel
from ckpt_inspector.gui.theme import is_palette_change, set_muted, span

HEATMAP_CACHE = 24  # pictures kept (at most 4 MiB each)
SLICE_DEBOUNCE_MS = 120
RESIZE_DEBOUNCE_MS = 200  # a kernel grid is laid out again for the view's new shape
HISTOGRAM, HEATMAP, VALUES = range(3)


class TensorView(QWidget):
    """The panel under the tree: the statistics and histogram of the tensor selected (from
    and into the file's :class:`Analysis`), its heatmap and its values; with no tensor
    selected, an overview (see :meth:`show_overview`) whose links ask for a key
    (``key_requested``)."""

    key_requested = Signal(str)

    def __init__(self, runner: JobRunner, reporter: ErrorReporter, analysis: Analysis,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.runner = runner
        self.reporter = reporter
        self.path = ""
        self.device = "cpu"
        self.key = ""
        self.info: TensorInfo | None = None
        self.analysis = analysis
        analysis.changed.connect(self._changed)
        analysis.progressed.connect(self._progress)
        analysis.finished.connect(self._finished)
        self._shown: set[int] = set()  # tensors of this file shown (their heatmaps are kept)
        self._heatmaps: OrderedDict[tuple[Any, ...], Heatmap] = OrderedDict()
        self._user_bins = False
        self._heat_job: Task | None = None
        self._heat_wanted: tuple[Any, ...] | None = None
        self._values_for: tuple[Any, ...] | None = None  # the slice the values table shows
        self._overview: Callable[[bool], str] | None = None  # makes the overview's HTML
        self._overview_wide = True
        self._waiting_for_plots = False
        self.hist_panel: Any = None
        self.heat_panel: Any = None
        self.values_panel: Any = None
        self._build()

    # -- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        self.title = QLabel()
        self.title.setObjectName("tensorTitle")
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status = QLabel()
        self.status.setObjectName("tensorStatus")
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.setObjectName("tensorCancel")
        self.cancel_button.setToolTip("Stop computing statistics for this tensor")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        self.lora = UpdateSwitch(self, self.runner)  # a LoRA pair's update, on request
        head = QHBoxLayout()
        head.setContentsMargins(4, 2, 4, 2)
        head.addWidget(self.title, 1)
        head.addWidget(self.lora.button)
        head.addWidget(self.status)
        head.addWidget(self.cancel_button)

        self.slice_bar = SliceBar()
        self.slice_bar.hide()
        self._slice_timer = QTimer(self)
        self._slice_timer.setSingleShot(True)
        self._slice_timer.setInterval(SLICE_DEBOUNCE_MS)
        self._slice_timer.timeout.connect(self._slice_changed)
        self.slice_bar.changed.connect(self._slice_timer.start)

        self.placeholder = QLabel("Select a tensor to see its statistics, histogram, heatmap "
                                  "and values.")
        self.placeholder.setObjectName("tensorPlaceholder")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        set_muted(self.placeholder)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("tensorTabs")
        self.tabs.setDocumentMode(True)
        self.tabs.currentChanged.connect(self._tab_changed)
        self.overview = QTextBrowser()
        self.overview.setObjectName("tensorOverview")
        self.overview.setOpenLinks(False)
        self.overview.anchorClicked.connect(self._link)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.placeholder)
        self.pages.addWidget(self.tabs)
        self.pages.addWidget(self.overview)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 4, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(head)
        layout.addWidget(self.slice_bar)
        layout.addWidget(self.pages, 1)
        self._show_placeholder("")

    def _ensure_panels(self) -> bool:
        """Build the plot tabs once pyqtgraph is imported; False while it is still loading."""
        if self.values_panel is not None:
            return True
        if not plots_ready():
            preload_plots(self.runner)  # needed now, whatever else runs
            if not self._waiting_for_plots:  # the import finishes within a second
                self._waiting_for_plots = True
                QTimer.singleShot(50, self._plots_maybe_ready)
            return False
        while self._build_next_panel():
            pass
        return True

    def _warm_up(self) -> None:
        """Build the panels one per event-loop turn while the user looks at the tree (each
        takes ~20 ms; all at once on the first click would stall the window)."""
        if self.values_panel is not None:
            return
        if plots_ready() and self._build_next_panel():
            QTimer.singleShot(60, self._warm_up)
        elif not plots_ready():
            preload_when_idle(self.runner)  # not while a read runs: it would slow it down
            QTimer.singleShot(200, self._warm_up)

    def _build_next_panel(self) -> bool:
        """Build the next missing panel; False when all exist."""
        if self.hist_panel is None:
            from ckpt_inspector.gui.tensor.plots import HistogramPanel

            self.hist_panel = HistogramPanel()
            self.hist_panel.bins_changed.connect(self._bins_changed)
            self.tabs.addTab(self.hist_panel, "Histogram")
        elif self.heat_panel is None:
            from ckpt_inspector.gui.tensor.plots import HeatmapPanel

            self.heat_panel = HeatmapPanel()
            self.heat_panel.describe = self._describe_pixel
            self.heat_panel.kernels_changed.connect(lambda _on: self._kernels_changed())
            self.heat_panel.reduce_changed.connect(lambda _r: self._update_heatmap())
            resize = QTimer(self)
            resize.setSingleShot(True)
            resize.setInterval(RESIZE_DEBOUNCE_MS)
            resize.timeout.connect(self._heat_resized)
            self.heat_panel.resized.connect(resize.start)
            self.tabs.addTab(self.heat_panel, "Heatmap")
        elif self.values_panel is None:
            from ckpt_inspector.gui.tensor.values_table import ValuesPanel

            self.values_panel = ValuesPanel()
            self.values_panel.export_requested.connect(self.save_npy_dialog)
            self.tabs.addTab(self.values_panel, "Values")
        else:
            return False
        return True

    def _plots_maybe_ready(self) -> None:
        if plots_ready():
            self._waiting_for_plots = False
            if self.info is not None:
                self.show_tensor(self.key, self.info)
        else:
            QTimer.singleShot(50, self._plots_maybe_ready)

    def show_overview(self, make: Callable[[bool], str]) -> None:
        """No tensor selected: what the file (or the selected group) holds, as the HTML
        ``make(wide)`` gives for a wide panel or a narrow one (made again when the panel
        becomes the other), whose ``key:`` links select a key."""
        self.cancel()
        self.info = None
        self._show_placeholder("")
        self._overview, self._overview_wide = make, self._wide()
        self.overview.setHtml(make(self._overview_wide))
        self.pages.setCurrentWidget(self.overview)

    def _wide(self) -> bool:
        from ckpt_inspector.gui.html.overview import WIDE

        return self.width() >= WIDE

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        if self._overview is not None and self._wide() != self._overview_wide:
            self._overview_wide = self._wide()
            self.overview.setHtml(self._overview(self._overview_wide))

    def _link(self, url: QUrl) -> None:
        from ckpt_inspector.gui.html.overview import key_of_href

        key = key_of_href(url.toString())
        if key is not None:
            self.key_requested.emit(key)

    def _show_placeholder(self, text: str) -> None:
        self.title.setText("")
        self.status.setText("")
        self.slice_bar.hide()
        self.placeholder.setText(text or "Select a tensor to see its statistics, histogram, "
                                 "heatmap and values.")
        self.pages.setCurrentIndex(0)

    # -- what is shown ------------------------------------------------------------------------
    def set_file(self, path: str) -> None:
        """A new file (or the same file read again): forget everything about the old one."""
        self.cancel()
        self.path = self.analysis.path = path
        QTimer.singleShot(100, self._warm_up)
        self.analysis.clear()
        self._shown.clear()
        self._heatmaps.clear()
        self.info = None
        self._show_placeholder("")
        self._values_for = None
        if self.values_panel is not None:
            self.values_panel.show_slice(None)

    def set_device(self, device: str) -> None:
        self.device = self.analysis.device = device

    def cached_stats(self, info: TensorInfo) -> Stats | None:
        stats = self.analysis.stats(info)
        return stats if isinstance(stats, Stats) else None

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if is_palette_change(event) and self.info is not None:
            self._show_title()

    def _show_title(self) -> None:
        info = self.info
        shape = "×".join(str(s) for s in info.shape) or "scalar"
        details = f"{escape(info.dtype)} [{escape(shape)}] · {human_bytes(info.nbytes)}"
        self.title.setText(f"<b>{escape(self.key or '(root)')}</b> &nbsp;"
                           + span("muted", details))

    def show_node(self, key: str, info: TensorInfo | None, label: str = "") -> None:
        if self.lora.selected(key, info):
            return  # the update of its LoRA pair is shown instead
        if info is None:
            self.show_message(label)
            return
        self.show_tensor(key, info)

    def show_message(self, text: str) -> None:
        """No tensor: ``text`` (or what to do) in its place."""
        self.cancel()
        self.info = None
        self._show_placeholder(text)

    def show_tensor(self, key: str, info: TensorInfo) -> None:
        if info is not self.info:
            self.cancel()
        self.info, self.key = info, key
        self._show_title()
        problem = unreadable(info)
        if problem:
            self.status.setText("")
            self.slice_bar.hide()
            self.placeholder.setText(problem)
            self.pages.setCurrentIndex(0)
            return
        if not self._ensure_panels():
            self.placeholder.setText("Preparing plots…")
            self.pages.setCurrentIndex(0)
            return
        self.pages.setCurrentIndex(1)
        grid = len(info.shape) == 4 and info.shape[2] <= 16 and info.shape[3] <= 16
        self.heat_panel.kernels.blockSignals(True)
        self.heat_panel.kernels.setVisible(len(info.shape) == 4)
        self.heat_panel.kernels.setChecked(grid)
        self.heat_panel.kernels.blockSignals(False)
        if self.slice_bar.shape != tuple(info.shape):
            self.slice_bar.set_shape(tuple(info.shape))
        self._place_slice_bar()
        if not self._user_bins:
            self.hist_panel.bins.blockSignals(True)
            self.hist_panel.bins.setValue(auto_bins(info.numel))
            self.hist_panel.bins.blockSignals(False)
        self._shown.add(id(info))
        self._show_stats()
        self._slice_changed()

    # -- statistics and histogram ----------------------------------------------------------------
    def _show_stats(self) -> None:
        info = self.info
        assert info is not None
        bins = self.hist_panel.bins.value()
        error = self.analysis.error(info)
        stats = self.analysis.stats(info)
        if error:
            self.status.setText(span("danger", escape(error)))
            self.hist_panel.clear()
            return
        if not isinstance(stats, Stats):
            self.hist_panel.clear()
            self._start(info, bins, "statistics…")
            return
        self.status.setText(f"statistics in {stats.seconds * 1000:,.0f} ms"
                            + (f" on {stats.device}" if stats.device != "cpu" else ""))
        if stats.min is None:
            self.hist_panel.clear()
            self.hist_panel.note.setText("no finite values to count")
        elif self.analysis.has_histogram(info, bins):
            self.hist_panel.show_histogram(self.analysis.histogram(info, bins), stats)
        else:
            self._start(info, bins, "histogram…")

    def _busy(self, text: str) -> None:
        self.status.setText(text)
        self.cancel_button.show()

    def _start(self, info: TensorInfo, bins: int, what: str) -> None:
        self._busy(what)
        self.analysis.analyse(info, self.key, bins)

    def _progress(self, info: Any, p: Progress) -> None:
        if info is self.info and p.total:
            self._busy(f"{p.stage} {100 * p.done // p.total}%")

    def _changed(self, info: Any) -> None:
        if info is self.info and self.hist_panel is not None:
            self.cancel_button.hide()
            self._show_stats()

    def _finished(self, info: Any, error: str) -> None:
        if info is self.info and error:
            self.cancel_button.hide()
            self.status.setText(span("danger", escape(error)))

    def _bins_changed(self, _bins: int) -> None:
        self._user_bins = True  # the user's choice holds for every tensor from now on
        if self.info is not None and not self.analysis.busy:
            self._show_stats()

    @property
    def _stats_job(self) -> Task | None:
        """The task computing the statistics shown (for tests and benchmarks)."""
        return self.analysis._job

    def cancel(self) -> None:
        """Stop the computations for the tensor shown (results so far are dropped)."""
        self.analysis.cancel()
        if self.lora.cancel():
            self.status.setText("cancelled")
        heat, self._heat_job = self._heat_job, None
        if heat is not None:
            self.runner.cancel(heat)
        self._heat_wanted = None
        self.cancel_button.hide()
        if self.info is not None and self.analysis.stats(self.info) is None and \
                not self.analysis.error(self.info):
            self.status.setText("cancelled")

    # -- heatmap and values ------------------------------------------------------------------------
    def _heat_key(self) -> tuple[Any, ...]:
        kernels = self.heat_panel.kernels.isChecked() and len(self.info.shape) == 4
        axes = self.slice_bar.axes()
        index = tuple(sorted(self.slice_bar.index().items()))
        reduce = self.heat_panel.reduce.currentData()
        # a kernel grid is laid out for the view's shape, in steps of about a fifth
        shape = round(math.log2(self.heat_panel.view_aspect()) * 4) / 4 if kernels else None
        return (id(self.info), kernels, axes if not kernels else None,
                index if not kernels else None, reduce if not kernels else None, shape)

    def _heat_resized(self) -> None:
        if self.info is not None and self.tabs.currentIndex() == HEATMAP:
            self._update_heatmap()  # nothing new unless a kernel grid's shape changed

    def _slice_changed(self) -> None:
        info = self.info
        if info is None or self.values_panel is None or unreadable(info):
            return
        shown = (id(info), self.slice_bar.axes(), tuple(sorted(self.slice_bar.index().items())))
        if shown == self._values_for:
            return  # the same slice (a debounced signal of a new shape): keep its note
        try:
            sl = TensorSlice(info, self.slice_bar.axes(), self.slice_bar.index())
        except (CheckpointError, ValueError, IndexError) as err:
            self.values_panel.show_slice(None, escape(str(err)))
            self._values_for = None
            return
        rows, cols = sl.shape
        what = "one value" if info.numel == 1 else (
            f"{rows:,} values" if sl.dims[1] is None else f"{rows:,} × {cols:,} slice")
        self.values_panel.show_slice(sl, what)
        self._values_for = shown
        self._heat_wanted = None
        if self.tabs.currentIndex() == HEATMAP:
            self._update_heatmap()

    def _tab_changed(self, index: int) -> None:
        self._place_slice_bar()
        if index == HEATMAP and self.info is not None:
            self._update_heatmap()

    def _kernels_changed(self) -> None:
        self._place_slice_bar()
        self._heat_wanted = None
        if self.tabs.currentIndex() == HEATMAP:
            self._update_heatmap()

    def _place_slice_bar(self) -> None:
        """The slice's axes and indices, shown only where they act: over the values, and
        over a heatmap that is not a grid of kernels (not over the histogram, which counts
        the whole tensor)."""
        info, tab = self.info, self.tabs.currentIndex()
        kernels = (self.heat_panel is not None and self.heat_panel.kernels.isChecked()
                   and info is not None and len(info.shape) == 4)
        sliced = info is not None and len(info.shape) >= 2 and self.pages.currentIndex() == 1
        # a tensor that has slices keeps the bar's room on every tab: the tabs do not jump
        # under the pointer when one without the bar is chosen
        policy = self.slice_bar.sizePolicy()
        policy.setRetainSizeWhenHidden(sliced)
        self.slice_bar.setSizePolicy(policy)
        self.slice_bar.setVisible(sliced and (tab == VALUES or (tab == HEATMAP and not kernels)))

    def _update_heatmap(self) -> None:
        info = self.info
        if info is None or unreadable(info):
            return
        key = self._heat_key()
        if key == self._heat_wanted:
            return
        cached = self._heatmaps.get(key)
        if cached is not None:
            self._heatmaps.move_to_end(key)
            self._show_heatmap(cached)
            return
        if self._heat_job is not None:
            self.runner.cancel(self._heat_job)
        self._heat_wanted = key
        kernels = key[1]
        self.heat_panel.note.setText("drawing…")
        self._heat_job = self.runner.run(
            f"Heatmap of {self.key}", heatmap, info, self.slice_bar.axes(),
            self.slice_bar.index(), kernels, MAX_SIDE, key[4] or "mean",
            2 ** key[5] if kernels else 1.0, quiet=True,
            on_result=lambda hm: self._heat_done(key, hm),
            on_error=lambda e: self._heat_failed(key, e))

    def _heat_done(self, key: tuple[Any, ...], hm: Heatmap) -> None:
        if key[0] not in self._shown:
            return
        self._heatmaps[key] = hm
        while len(self._heatmaps) > HEATMAP_CACHE:
            self._heatmaps.popitem(last=False)
        if key == self._heat_wanted:
            self._heat_job = None
            self._show_heatmap(hm)

    def _heat_failed(self, key: tuple[Any, ...], err: BaseException) -> None:
        if key == self._heat_wanted:
            self._heat_job = None
            self.heat_panel.clear()
            self.heat_panel.note.setText(f"cannot draw: {err}")

    def _show_heatmap(self, hm: Heatmap) -> None:
        info = self.info
        self._heat_wanted = self._heat_key()
        note = ""
        if hm.grid is not None and info is not None:
            kh, kw = info.shape[2], info.shape[3]
            note = f"{hm.grid[0]}×{hm.grid[1]} kernels of {kh}×{kw}"
        self.heat_panel.show_heatmap(hm, note)

    def _describe_pixel(self, row: int, col: int) -> str:
        sl = self.values_panel.model.slice if self.values_panel is not None else None
        return describe_pixel(self.info, self.heat_panel.heatmap, sl, self.slice_bar.axes(),
                              self.slice_bar.index(), row, col)

    # -- export --------------------------------------------------------------------------------
    def save_npy_dialog(self, ask: Callable[..., tuple[str, str]] | None = None) -> None:
        info = self.info
        if info is None:
            return
        name = (self.key or stem_of(self.path)) + ".npy"
        folder = os.path.expanduser("~") if is_url(self.path) else os.path.dirname(self.path)
        start = os.path.join(folder, name)
        ask = ask or QFileDialog.getSaveFileName
        out, _filter = ask(self, "Save tensor as .npy", start, "NumPy arrays (*.npy)")
        if not out:
            return
        if not out.endswith(".npy"):
            out += ".npy"
        self.values_panel.note.setText("saving…")
        self.runner.run(f"Saving {os.path.basename(out)}", save_npy, info, out, self.path, True,
                        on_result=self._saved)

    def _saved(self, result: dict[str, Any]) -> None:
        if self.values_panel is not None:
            self.values_panel.note.setText(
                f"saved {escape(result['path'])} ({human_bytes(result['bytes'])}, "
                f"{escape(result['dtype'])})")

    def dispose(self) -> None:
        self.cancel()
        self.analysis.clear()
        self._shown.clear()
        self._heatmaps.clear()
        self.info = None
        self._values_for = None
        if self.values_panel is not None:
            self.values_panel.show_slice(None)

