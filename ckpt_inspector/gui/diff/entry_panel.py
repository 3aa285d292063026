"""The selected key of a comparison: the difference's numbers, both sides side by side
with their statistics, and the histogram of A − B (figures from the tab's Analysis).
"""

from __future__ import annotations

from html import escape
from typing import Any

from PySide6.QtCore import (
    QEvent,
    Qt,
    QUrl,
    Signal,
)
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLayout,
    QSplitter,
    QStackedWidget,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.ops.analysis import auto_bins, unreadable
from ckpt_inspector.core.ops.diff import (
    Entry,
    Numbers,
)
from ckpt_inspector.core.ops.difftree import (
    Comparison,
    DiffNode,
    histogram_reason,
)
from ckpt_inspector.core.ops.histogram import Histogram
from ckpt_inspector.core.ops.stats import Stats
from ckpt_inspector.core.progress import Progress
from ckpt_inspector.core.tree import TensorInfo
from ckpt_inspector.gui.analysis import Analysis
from ckpt_inspector.gui.html.checkpoint import css
from ckpt_inspector.gui.html.diff import entry_html, group_html, overview_html
from ckpt_inspector.gui.html.overview import key_of_href
from ckpt_inspector.gui.jobs import Task
from ckpt_inspector.gui.theme import is_palette_change, set_muted, span


def column(*items: QWidget | QLayout, spacing: int = 0) -> QWidget:
    """A widget holding ``items`` top to bottom without margins; the last one stretches."""
    widget = QWidget()
    layout = QVBoxLayout(widget)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(spacing)
    for i, item in enumerate(items):
        stretch = int(i == len(items) - 1)
        if isinstance(item, QLayout):
            layout.addLayout(item, stretch)
        else:
            layout.addWidget(item, stretch)
    return widget


class EntryPanel(QWidget):
    """The selected key: the difference's numbers, both sides side by side with their
    statistics, and the histogram of A − B. With no key (or a group) selected, the
    comparison's largest changes across the whole width, linked (``key_requested``)."""

    key_requested = Signal(str)

    def __init__(self, analysis: Analysis, parent: QWidget | None = None):
        super().__init__(parent)
        self.analysis = analysis
        self.comparison: Comparison | None = None
        analysis.changed.connect(self._changed)
        analysis.progressed.connect(self._progress)
        analysis.finished.connect(self._finished)
        self.node: DiffNode | None = None
        self._user_bins = False
        self.hist_panel: Any = None
        self._build()

    def _build(self) -> None:
        self.status = QLabel()
        self.status.setObjectName("diffStatus")
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.setObjectName("diffCancel")
        self.cancel_button.setToolTip("Stop computing the statistics of this key")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        head = QHBoxLayout()
        head.setContentsMargins(4, 0, 4, 0)
        head.addStretch(1)
        head.addWidget(self.status)
        head.addWidget(self.cancel_button)
        self.text = QTextBrowser()
        self.text.setObjectName("diffDetails")
        self.text.setOpenLinks(False)
        self.text.anchorClicked.connect(self._link)
        self.hist_note = QLabel()
        self.hist_note.setObjectName("diffHistogramNote")
        self.hist_note.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.hist_note.setWordWrap(True)
        set_muted(self.hist_note)
        self.hist_pages = QStackedWidget()
        self.hist_pages.addWidget(self.hist_note)
        self.hist_pages.setMinimumWidth(260)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.text)
        self.right = column(head, self.hist_pages)  # hidden while no key is shown
        split.addWidget(self.right)
        split.setChildrenCollapsible(False)
        split.setStretchFactor(0, 4)
        split.setStretchFactor(1, 3)
        split.setSizes([640, 480])
        self.splitter = split
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(split, 1)
        self.show_node(None)

    def _ensure_histogram(self) -> Any:
        if self.hist_panel is None:
            from ckpt_inspector.gui.tensor.plots import HistogramPanel

            panel = HistogramPanel()
            panel.setObjectName("differenceHistogram")
            panel.bins.setToolTip("Number of equal bins from −max |A−B| to +max |A−B|")
            panel.bins_changed.connect(self._bins_changed)
            # the panel names its axis "value" whenever it draws: this one is a difference
            panel.log_box.toggled.connect(lambda _on: self._label_axis())
            self.hist_pages.addWidget(panel)
            self.hist_panel = panel
        return self.hist_panel

    def _label_axis(self) -> None:
        self.hist_panel.plot.setLabel("bottom", "A − B")

    # -- what is shown -------------------------------------------------------------------------
    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if is_palette_change(event) and getattr(self, "text", None) is not None:
            self.show_node(self.node)  # drawn again in the new theme's colours

    def set_comparison(self, comparison: Comparison | None) -> None:
        """The comparison whose overview shows while no key is selected."""
        self.comparison = comparison
        if self.node is None:
            self.show_node(None)

    def _link(self, url: QUrl) -> None:
        key = key_of_href(url.toString())
        if key is not None:
            self.key_requested.emit(key)

    def show_node(self, node: DiffNode | None) -> None:
        if node is not self.node:
            self._stop_job()
            self.status.setText("")
        self.node = node
        # a key's histogram beside its figures; the overview and a group take the width
        self.right.setVisible(node is not None and node.entry is not None)
        if node is None:
            self.text.setHtml(overview_html(self.comparison) if self.comparison is not None
                              else css() + "<p class='muted'>Select a key to see both sides: "
                              "their statistics side by side and the histogram of A − B.</p>")
            self._no_histogram("")
            return
        e = node.entry
        if e is None:
            self.text.setHtml(group_html(node))
            self._no_histogram("A group of keys: select one of them to see its difference.")
            return
        self._refresh(start=True)

    def _refresh(self, start: bool = False) -> None:
        """Draw the selected entry from what is known, and start computing the rest."""
        node = self.node
        if node is None or node.entry is None:
            return
        e = node.entry
        ta = e.a.tensor if e.a is not None else None
        tb = e.b.tensor if e.b is not None else None
        numbers = self.analysis.numbers(e)
        stats = [self._side_stats(t) for t in (ta, tb)]
        reason = histogram_reason(e)
        bins = self._bins(e)
        hist = self.analysis.histogram(e, bins) if not reason else None
        busy = self.analysis.busy
        if start and not busy:
            need = [t if t is not None and s is None else None for t, s in zip((ta, tb), stats)]
            pair = (ta, tb, numbers) if not reason and hist is None else None
            if any(need) or pair is not None:
                self._start(e, need[0], need[1], pair, bins)
                busy = True
        self.text.setHtml(entry_html(e, numbers, stats[0], stats[1], busy))
        if reason:
            self._no_histogram(reason)
        elif isinstance(hist, Histogram):
            self._show_histogram(hist, numbers or Numbers(ta.numel))
        elif isinstance(hist, str):
            self._no_histogram(f"No histogram: {hist}")
        else:
            self._no_histogram("histogram of A − B…")

    def _side_stats(self, t: TensorInfo | None) -> Stats | str | None:
        if t is None:
            return None
        problem = unreadable(t)
        if problem:
            return problem
        return self.analysis.stats(t)

    def _bins(self, e: Entry) -> int:
        if self._user_bins and self.hist_panel is not None:
            return self.hist_panel.bins.value()
        return auto_bins(e.numel)

    def _no_histogram(self, text: str) -> None:
        self.hist_note.setText(text)
        self.hist_pages.setCurrentWidget(self.hist_note)

    def _show_histogram(self, h: Histogram, n: Numbers) -> None:
        panel = self._ensure_histogram()
        panel.bins.blockSignals(True)
        panel.bins.setValue(h.counts.size)
        panel.bins.blockSignals(False)
        panel.show_histogram(h, Stats("float64", n.numel, "float"))
        self._label_axis()
        same = n.numel - n.changed
        note = [f"all {n.numel:,} differences" + (f", {same:,} of them 0" if same else "")]
        if h.nan:
            note.append(span("danger", f"<b>not shown:</b> {h.nan:,} not finite"))
        panel.note.setText(" · ".join(note))
        self.hist_pages.setCurrentWidget(panel)

    # -- computing -----------------------------------------------------------------------------
    def _start(self, e: Entry, a: TensorInfo | None, b: TensorInfo | None,
               pair: tuple[TensorInfo, TensorInfo, Numbers | None] | None, bins: int) -> None:
        self.status.setText("statistics…")
        self.cancel_button.show()
        self.analysis.analyse_pair(e, a, b, pair, bins)

    def _current(self, e: Any) -> bool:
        return self.node is not None and self.node.entry is e

    def _progress(self, e: Any, p: Progress) -> None:
        if self._current(e):
            pct = f" {100 * p.done // p.total}%" if p.total else ""
            self.status.setText(f"{p.stage}{pct}")

    def _changed(self, e: Any) -> None:
        if self._current(e):
            self._refresh()

    def _finished(self, e: Any, error: str) -> None:
        if not self._current(e):
            return
        self.cancel_button.hide()
        if error:
            self.status.setText(span("danger", escape(error)))
        else:
            self.status.setText("")
            self._refresh()

    def _bins_changed(self, _bins: int) -> None:
        self._user_bins = True  # the user's choice holds for every key from now on
        if not self.analysis.busy:
            self._refresh(start=True)

    @property
    def _job(self) -> Task | None:
        """The task computing for the key shown (for tests)."""
        return self.analysis._job

    def _stop_job(self) -> bool:
        self.cancel_button.hide()
        return self.analysis.cancel()

    def cancel(self) -> None:
        """Stop what is being computed for the key shown (finished parts are kept)."""
        if self._stop_job():
            self.status.setText("cancelled")
            self._refresh()

    @property
    def busy(self) -> bool:
        return self.analysis.busy

    def cached_stats(self, t: TensorInfo) -> Stats | str | None:
        return self.analysis.stats(t)

    def forget(self) -> None:
        self._stop_job()
        self.node = None
        self.comparison = None
        self.analysis.clear()
