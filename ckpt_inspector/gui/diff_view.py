"""A comparison of two checkpoints in a tab: what changed, where, and by how much.

Reading both files and comparing them (``core.diff``) runs on a worker, with its
progress in the status bar and the main window's Cancel. The result is a tree
of every key of both files, flat or grouped into modules, coloured by what
happened to it, filtered by status and key, and sortable by any column (the
difference columns numerically). Selecting a key computes both tensors'
statistics and the histogram of A − B on a worker; selecting another cancels
that, and results are kept while the tab is open.
"""

from __future__ import annotations

import os
from html import escape, unescape
from typing import Any, ClassVar

from PySide6.QtCore import (
    QEvent,
    QModelIndex,
    QPersistentModelIndex,
    QPoint,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLayout,
    QLineEdit,
    QMenu,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.keytree import natural_key
from ckpt_inspector.core.ops import diff as core_diff
from ckpt_inspector.core.ops.analysis import auto_bins
from ckpt_inspector.core.ops.diff import (
    CHANGED,
    DTYPE,
    IDENTICAL,
    KIND,
    ONLY_A,
    ONLY_B,
    SHAPE,
    STATUSES,
    UNREADABLE,
    DiffResult,
    Entry,
    Numbers,
)
from ckpt_inspector.core.ops.difftree import (
    RANK,
    SEVERITY,
    STATUS_HELP,
    Comparison,
    DiffNode,
    MatchOptions,
    compare_files,
    side_text,
    status_text,
)
from ckpt_inspector.core.ops.stats import Histogram, Stats, format_number
from ckpt_inspector.core.progress import Progress
from ckpt_inspector.core.summary import format_value, human_bytes
from ckpt_inspector.core.tree import TensorInfo
from ckpt_inspector.gui import key_tree
from ckpt_inspector.gui.analysis import Analysis
from ckpt_inspector.gui.errors import ErrorReporter, describe
from ckpt_inspector.gui.icons import badge_icon
from ckpt_inspector.gui.jobs import JobRunner, Task
from ckpt_inspector.gui.panels import breakable, css, stats_kind, stats_pairs
from ckpt_inspector.gui.tensor_view import TensorView
from ckpt_inspector.gui.theme import brush, color, is_palette_change, set_muted, span
from ckpt_inspector.gui.tree_model import NodeRole, NodeTreeModel

# -- what each status looks like: text colour (a theme role), badge colour, badge mark ---------
STATUS_STYLE = {
    IDENTICAL: ("muted", "#9ca3af", "="),
    CHANGED: ("changed", "#f97316", "~"),
    DTYPE: ("warning", "#eab308", "T"),
    SHAPE: ("danger", "#dc2626", "≠"),
    KIND: ("danger", "#dc2626", "≠"),
    ONLY_A: ("accent", "#2563eb", "−"),
    ONLY_B: ("purple", "#9333ea", "+"),
    UNREADABLE: ("danger_fg", "#7f1d1d", "?"),
}
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
DEBOUNCE_MS = 150
AUTO_EXPAND_LIMIT = 400


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


def status_color(status: str) -> str:
    """The text colour of a status in the current theme."""
    return color(STATUS_STYLE[status][0])


def status_icon(status: str) -> Any:
    _text, color, mark = STATUS_STYLE[status]
    return badge_icon(color, mark)


def percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` in words people read at a glance (rich text): 100%, 3.2%,
    &lt;0.1%, 0%."""
    if not part or not whole:
        return "0%"
    if part == whole:
        return "100%"
    share = part / whole
    # &lt; and &gt;: this goes into rich text, where a bare "<" starts a tag
    return "&lt;0.1%" if share < 0.001 else ("&gt;99.9%" if share > 0.999 else f"{share:.1%}")


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
            return format_number(d.cosine, 9) if d.cosine is not None else ""
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
        children = node.children
        return 0 <= row < len(children) and self.accepts(children[row].entry)

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        source = self.sourceModel()
        if source is not None:
            source.sort(column, order)


# -- the selected key --------------------------------------------------------------------------
def _cell(value: str, color: str | None = None, bold: bool = False) -> str:
    style = f" style='color:{color}'" if color else ""
    text = f"<b>{value}</b>" if bold else value
    return f"<td{style}>{text}</td>"


def compare_rows(rows: list[tuple[str, str, str]], differ_color: str = "") -> str:
    """A table of (label, A, B) as HTML under a row naming A and B; a B that differs from
    A is bold in ``differ_color``."""
    nowrap = "style='white-space:nowrap'"
    out = ["<tr><th></th><th><b>A</b></th><th><b>B</b></th></tr>"]
    for label, a, b in rows:
        mark = bool(differ_color) and a != b
        out.append(f"<tr><th {nowrap}>{escape(label)}</th>{_cell(a)}"
                   f"{_cell(b, differ_color if mark else None, mark)}</tr>")
    return "<table>" + "".join(out) + "</table>"


def _shape(t: TensorInfo) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def side_rows(e: Entry) -> list[tuple[str, str, str]]:
    """What both sides are: the key in each file, dtype, shape, size; or type and value."""
    sides = (e.a, e.b)

    def row(label: str, get: Any) -> tuple[str, str, str]:
        a, b = ("<span class='muted'>—</span>" if s is None else escape(get(s)) for s in sides)
        return label, a, b

    def tensor(get: Any) -> Any:
        return lambda s: get(s.tensor) if s.tensor is not None else ""

    def value(get: Any) -> Any:
        return lambda s: get(s.node) if s.tensor is None else ""

    rows: list[tuple[str, str, str]] = []
    if any(s is not None and s.key != e.key for s in sides):
        rows.append(row("key in the file", lambda s: s.key))
    if any(s is not None and s.tensor is not None for s in sides):
        rows += [row("dtype", tensor(lambda t: t.dtype)), row("shape", tensor(_shape)),
                 row("elements", tensor(lambda t: f"{t.numel:,}")),
                 row("size", tensor(lambda t: human_bytes(t.nbytes)))]
    if any(s is not None and s.tensor is None for s in sides):
        rows += [row("type", value(lambda n: n.type_name or n.kind)),
                 row("value", value(lambda n: format_value(n, 400)))]
    return rows


def stats_columns(a: Stats | str | None, b: Stats | str | None, busy: bool
                  ) -> list[tuple[str, str, str]]:
    """The statistics of both sides row by row (a label missing on one side left empty);
    a message where a side's could not be computed, '…' while it is being computed."""
    pairs = {side: (dict(stats_pairs(s)) if isinstance(s, Stats) else {})
             for side, s in (("a", a), ("b", b))}
    labels = list(pairs["a"]) + [k for k in pairs["b"] if k not in pairs["a"]]

    def filler(s: Stats | str | None) -> str:
        if isinstance(s, str):
            return f"<span class='bad'>{escape(s)}</span>"
        return "…" if busy else ""

    if not labels:
        return [("statistics", filler(a), filler(b))]
    return [(k, pairs["a"].get(k, "" if isinstance(a, Stats) else filler(a)),
             pairs["b"].get(k, "" if isinstance(b, Stats) else filler(b))) for k in labels]


def numbers_rows(n: Numbers) -> list[tuple[str, str]]:
    f = format_number
    rows = [("changed", f"{n.changed:,} of {n.numel:,} ({percent(n.changed, n.numel)})")]
    if n.changed or n.nan_mismatch:
        rows += [("max |A−B|", f(n.max_abs)), ("mean |A−B|", f(n.mean_abs)),
                 ("rel L2 ‖A−B‖/max(‖A‖,‖B‖)", f(n.rel_l2)),
                 ("cosine", f(n.cosine, 9) if n.cosine is not None else "-")]
    if n.nan_mismatch:
        where = "place" if n.nan_mismatch == 1 else "places"
        rows.append(("NaN/inf", f"<span class='bad'><b>{n.nan_mismatch:,}</b> {where} where one "
                                "side only is NaN or ±inf</span>"))
    if n.note:
        rows.append(("note", escape(n.note)))
    return rows


def entry_html(e: Entry, numbers: Numbers | None, stats_a: Stats | str | None,
               stats_b: Stats | str | None, busy: bool) -> str:
    """The selected key: its status, the difference's numbers and both sides (left), the
    statistics of both sides (right)."""
    title = (f"<p><b class='mono'>{breakable(e.key or '(root)')}</b><br>"
             f"<span style='color:{status_color(e.status)}'><b>{escape(e.status)}</b></span> "
             f"<span class='muted'>— {escape(STATUS_HELP[e.status])}</span></p>")
    parts = []
    if e.error:
        parts.append(f"<p class='bad'>{escape(e.error)}</p>")
    if numbers is not None:
        how = " (element by element, in C order)" if e.status == SHAPE else ""
        parts.append(f"<h3>Difference{how}</h3><table>" + "".join(
            f"<tr><th style='white-space:nowrap'>{escape(k)}</th><td>{v}</td></tr>"
            for k, v in numbers_rows(numbers)) + "</table>")
    parts.append("<h3>A and B</h3>" + compare_rows(side_rows(e), color))
    right = ""
    if any(s is not None and s.tensor is not None for s in (e.a, e.b)):
        kinds = {stats_kind(s) for s in (stats_a, stats_b) if isinstance(s, Stats)}
        right = (f"<h3>Statistics{''.join(sorted(kinds))}</h3>"
                 + compare_rows(stats_columns(stats_a, stats_b, busy)))
    return (css() + title + "<table width='100%'><tr><td style='padding-right:18px'>"
            + "".join(parts) + f"</td><td>{right}</td></tr></table>")


def group_html(d: DiffNode) -> str:
    counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for n in d.walk():
        if n.entry is not None:
            counts[n.entry.status] += 1
    rows = "".join(
        f"<tr><td style='color:{status_color(s)}'>{escape(s)}</td>"
        f"<td class='num'>{n:,}</td></tr>" for s, n in counts.items() if n)
    return (css() + f"<p><b class='mono'>{breakable(d.key)}</b><br>"
            f"<span style='color:{status_color(d.worst)}'>"
            f"<b>{escape(status_text(d))}</b></span> <span class='muted'>— a group of "
            f"{d.entries:,} keys</span></p><table>{rows}</table>"
            + (f"<p>{d.elements_changed:,} elements changed below.</p>"
               if d.elements_changed else ""))


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
        problem = TensorView._unreadable(t)
        if problem:
            return problem
    if e.status == IDENTICAL:
        return "Identical: A − B is zero everywhere."
    if e.numbers is not None and not e.numbers.changed and not e.numbers.nan_mismatch:
        return "The same values: A − B is zero everywhere."
    return ""


class EntryPanel(QWidget):
    """The selected key: the difference's numbers, both sides side by side with their
    statistics, and the histogram of A − B."""

    def __init__(self, analysis: Analysis, parent: QWidget | None = None):
        super().__init__(parent)
        self.analysis = analysis
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
        split.addWidget(column(head, self.hist_pages))
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
            from ckpt_inspector.gui.plots import HistogramPanel

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

    def show_node(self, node: DiffNode | None) -> None:
        if node is not self.node:
            self._stop_job()
            self.status.setText("")
        self.node = node
        if node is None:
            self.text.setHtml(css() + "<p class='muted'>Select a key to see both sides: their "
                              "statistics side by side and the histogram of A − B.</p>")
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
        problem = TensorView._unreadable(t)
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
        self.analysis.clear()


# -- the tab -----------------------------------------------------------------------------------
def tab_title(path_a: str, path_b: str) -> str:
    """``a.pt ↔ b.pt``; with the folder where both files have the same name."""
    a, b = os.path.basename(path_a), os.path.basename(path_b)
    if a == b:
        a = os.path.join(os.path.basename(os.path.dirname(path_a)), a)
        b = os.path.join(os.path.basename(os.path.dirname(path_b)), b)
    return f"{a} ↔ {b}"


def rule_text(result: DiffResult) -> str:
    if not result.rules:
        return "Keys matched exactly."
    how = (" — <b>found automatically</b>, because it matches more keys" if result.auto_rule
           else "")
    return ("Keys matched after " + "; ".join(escape(r.describe()) for r in result.rules)
            + how + ".")


VERDICT_STYLE = {"safe": ("ok", "safe"),  # colour role, words
                 "needs-trust": ("warning", "needs trust: loading it with torch runs code"),
                 "dangerous": ("danger", "DANGEROUS: open it in its own tab to see why")}


def verdict_html(verdict: str) -> str:
    """A file's security verdict, so that a comparison never hides a hostile file."""
    role, text = VERDICT_STYLE.get(verdict, ("muted", verdict))
    return span(role, escape(text), bold=True) if verdict else ""


def summary_html(c: Comparison) -> str:
    """The header: both files, the key rule, and how many keys of each status."""
    result = c.result
    files = "".join(
        f"<tr><td><b>{name}</b>&nbsp;</td><td>{escape(ckpt.path)}&nbsp;&nbsp;</td>"
        f"<td style='color:{color('muted')}'>{escape(ckpt.format)} · {t['tensors']:,} tensors · "
        f"{human_bytes(t['nbytes'])}</td><td>&nbsp;&nbsp;{verdict_html(v)}</td></tr>"
        for name, ckpt, t, v in (("A", c.a, c.totals_a, c.verdicts[0]),
                                 ("B", c.b, c.totals_b, c.verdicts[1])))
    counts = result.counts()
    shown = [s for s in SEVERITY if counts[s]]
    items = " &nbsp; ".join(
        f"<span style='color:{status_color(s)}'>●&nbsp;<b>{counts[s]:,}</b>&nbsp;{escape(s)}"
        "</span>" for s in shown) or "no keys on either side"
    changed, compared = c.elements()
    if result.identical:
        verdict = span("ok", "IDENTICAL", bold=True)
    else:
        verdict = span("changed", "DIFFERENT", bold=True)
    elements = (f" &nbsp;—&nbsp; <b>{changed:,}</b> of {compared:,} elements compared changed "
                f"({percent(changed, compared)})" if compared else "")
    return (f"<table cellspacing='0'>{files}</table>"
            f"<div style='margin-top:3px'>{rule_text(result)}</div>"
            f"<div style='margin-top:3px'>{verdict} &nbsp; {items}{elements}</div>")


class DiffView(QWidget):
    """A tab comparing two files. ``shown(comparison)`` once the result is on screen;
    ``open_requested(path, key)`` when the user asks to see a key in one of the files."""

    shown = Signal(object)
    failed = Signal(str)
    open_requested = Signal(str, str)

    def __init__(self, path_a: str, path_b: str, runner: JobRunner, reporter: ErrorReporter,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.path_a = os.path.abspath(path_a)
        self.path_b = os.path.abspath(path_b)
        self.runner = runner
        self.reporter = reporter
        self.comparison: Comparison | None = None
        self.task: Task | None = None
        self._generation = 0
        self._disposed = False
        self._models: dict[bool, DiffModel] = {}
        self.options = MatchOptions()
        self._build()

    @property
    def title(self) -> str:
        return tab_title(self.path_a, self.path_b)

    def changeEvent(self, event: QEvent) -> None:
        """A theme switch: the header's box and text in its colours."""
        super().changeEvent(event)
        if is_palette_change(event):
            self._style_header()
            if self.comparison is not None:
                self.header.setText(summary_html(self.comparison))

    def _style_header(self) -> None:
        self.header.setStyleSheet(
            f"QLabel#diffHeader {{ background:{color('panel_bg')}; border:1px solid "
            f"{color('panel_border')}; border-radius:4px; padding:6px; }}")

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.header = QLabel()
        self.header.setObjectName("diffHeader")
        self.header.setTextFormat(Qt.TextFormat.RichText)
        self.header.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.header.setWordWrap(True)
        self._style_header()

        self.filter_buttons = QButtonGroup(self)
        self.filter_buttons.setExclusive(True)
        filter_row = QHBoxLayout()
        filter_row.setContentsMargins(0, 0, 0, 0)
        filter_row.setSpacing(2)
        for i, (text, _statuses, tip) in enumerate(FILTERS):
            button = QToolButton()
            button.setText(text)
            button.setCheckable(True)
            button.setToolTip(tip)
            button.setObjectName(f"diffFilter{text.split()[0]}")
            self.filter_buttons.addButton(button, i)
            filter_row.addWidget(button)
        self.filter_buttons.button(ALL).setChecked(True)
        self.filter_buttons.idToggled.connect(lambda _i, on: on and self.apply_filter())
        filter_row.addSpacing(8)
        self.filter_edit = key_tree.make_filter_edit(
            "diffFilterEdit", "Filter keys (words, all must match)", self.apply_filter,
            DEBOUNCE_MS, self)
        filter_row.addWidget(self.filter_edit, 1)
        self.match_label = QLabel()
        self.match_label.setObjectName("diffMatchLabel")
        filter_row.addWidget(self.match_label)
        self.group_box = QCheckBox("Group by module")
        self.group_box.setToolTip("Group dotted keys (layer1.0.conv1.weight) into a module "
                                  "tree; untick for one row per key, easier to sort by "
                                  "difference")
        self.group_box.toggled.connect(self._set_grouped)
        filter_row.addWidget(self.group_box)

        self.proxy = DiffFilter(self)
        # largest difference first: what changed most is the first row
        self.tree = key_tree.make_key_tree(self.proxy, "diffTree", self._current_changed,
                                  self._context_menu, self.copy_keys, self._refresh_selection,
                                  sort=(REL_L2, Qt.SortOrder.DescendingOrder))

        left = column(filter_row, self.tree, spacing=4)
        self.entry_panel = EntryPanel(Analysis(self.runner, self))
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.entry_panel)
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setChildrenCollapsible(False)
        self.splitter.setSizes([400, 360])

        body = column(self.header, self.splitter, spacing=6)

        # "comparing…", errors and cancellations, with a button to compare again
        self.message_page = key_tree.MessagePage("diffMessage", "Compare again", self.start,
                                                  progress=True, on_cancel=self.cancel)
        self.message, self.retry_button = self.message_page.label, self.message_page.button
        self.progress = self.message_page.progress
        self.retry_button.setObjectName("diffRetry")

        self.pages = QStackedWidget()
        self.pages.addWidget(self.message_page)
        self.pages.addWidget(body)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(self._build_options())
        layout.addWidget(self.pages)

    def _build_options(self) -> QHBoxLayout:
        """How keys are matched, as ``ckpt-inspector diff`` lets you say it: shown above
        the result, the progress and any error alike, so a wrong choice can be mended."""
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 4)
        row.setSpacing(6)
        row.addWidget(QLabel("Match keys"))
        self.match_mode = QComboBox()
        self.match_mode.setObjectName("diffMatchMode")
        self.match_mode.addItems(["automatically", "exactly", "after stripping"])
        self.match_mode.setToolTip(
            "automatically: exactly, or after stripping a prefix (module., model., …) from "
            "one side when that matches more tensors; exactly: keys as they are; after "
            "stripping: the prefix you give")
        self.prefix_edit = QLineEdit()
        self.prefix_edit.setObjectName("diffPrefix")
        self.prefix_edit.setPlaceholderText("module.")
        self.prefix_edit.setMaximumWidth(160)
        self.prefix_side = QComboBox()
        self.prefix_side.setObjectName("diffPrefixSide")
        self.prefix_side.addItems(["from both", "from A", "from B"])
        self.part_a = QLineEdit()
        self.part_a.setObjectName("diffPartA")
        self.part_a.setPlaceholderText("all of A (or a key: model_state_dict)")
        self.part_b = QLineEdit()
        self.part_b.setObjectName("diffPartB")
        self.part_b.setPlaceholderText("all of B")
        self.apply_button = QPushButton("Compare")
        self.apply_button.setObjectName("diffApply")
        self.apply_button.setToolTip("Compare again with these choices")
        self.apply_button.clicked.connect(self.apply_options)
        for edit in (self.prefix_edit, self.part_a, self.part_b):
            edit.returnPressed.connect(self.apply_options)
        self.match_mode.currentIndexChanged.connect(self._mode_changed)
        for w in (self.match_mode, self.prefix_edit, self.prefix_side):
            row.addWidget(w)
        row.addSpacing(12)
        row.addWidget(QLabel("A"))
        row.addWidget(self.part_a, 1)
        row.addWidget(QLabel("B"))
        row.addWidget(self.part_b, 1)
        row.addWidget(self.apply_button)
        self._mode_changed()
        return row

    def _mode_changed(self, *_args: Any) -> None:
        stripping = self.match_mode.currentIndex() == 2
        self.prefix_edit.setEnabled(stripping)
        self.prefix_side.setEnabled(stripping)

    def apply_options(self) -> None:
        """Compare again with the choices in the options row."""
        mode = self.match_mode.currentIndex()
        prefix = self.prefix_edit.text().strip()
        side = ("both", "a", "b")[self.prefix_side.currentIndex()]
        rules = (core_diff.PrefixRule(prefix, side),) if mode == 2 and prefix else ()
        self.options = MatchOptions(rules, auto=mode == 0, key_a=self.part_a.text().strip(),
                                    key_b=self.part_b.text().strip())
        self.start()

    def _show_message(self, html: str, retry: bool, progress: bool = False) -> None:
        self.message_page.show_message(html, retry, progress)
        self.pages.setCurrentIndex(0)

    # -- comparing ---------------------------------------------------------------------------
    def start(self) -> None:
        """Read both files and compare them on a worker (again, if they were)."""
        if self.task is not None:
            self.runner.cancel(self.task)
        self._generation += 1
        generation = self._generation
        self.progress.setRange(0, 0)
        self._show_message(f"Comparing <b>{escape(self.title)}</b>…", retry=False, progress=True)
        self.task = self.runner.run(
            f"Comparing {self.title}", compare_files, self.path_a, self.path_b,
            self.options, cancellable=True,
            on_result=lambda c: self._done(c, generation),
            on_error=lambda e: self._failed(e, generation),
            on_progress=lambda p: self._progress(p, generation),
            on_cancel=lambda: self._cancelled(generation))

    def _progress(self, p: Progress, generation: int) -> None:
        if generation != self._generation or self.task is None:
            return
        detail = f" {escape(p.detail)}" if p.detail else ""
        fraction = self.task.fraction  # the window shows it too, from the task
        if fraction is not None:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(fraction * 1000))
        else:
            self.progress.setRange(0, 0)
        self._show_message(f"Comparing <b>{escape(self.title)}</b>…<br><br>"
                           + span("muted", f"{escape(p.stage)}{detail}"),
                           retry=False, progress=True)

    def _done(self, c: Comparison, generation: int) -> None:
        if generation != self._generation or self._disposed:
            return
        self.task = None
        self.comparison = c
        self.entry_panel.forget()
        old = list(self._models.values())
        self._models = {True: DiffModel(c.grouped, self), False: DiffModel(c.flat, self)}
        self.header.setText(summary_html(c))
        counts = c.result.counts()
        for i, (text, statuses, _tip) in enumerate(FILTERS):
            n = len(c.result.entries) if statuses is None else sum(counts[s] for s in statuses)
            button = self.filter_buttons.button(i)
            button.setText(f"{text}  {n:,}")
            button.setEnabled(bool(n) or i == ALL)
        self._show_model(self.group_box.isChecked())
        self.pages.setCurrentIndex(1)
        for model in old:
            model.deleteLater()
        self.shown.emit(c)

    def _failed(self, err: BaseException, generation: int) -> None:
        if generation != self._generation:
            return
        self.task = None
        message, _details = describe(err)
        self._show_message(f"<b>Could not compare {escape(self.title)}</b><br><br>"
                           f"{escape(message)}", retry=True)
        self.reporter.report("Could not compare the files", err,
                             f"A: {self.path_a}\nB: {self.path_b}")
        self.failed.emit(message)

    def cancel(self) -> None:
        """Stop the comparison that is running (the Cancel under its progress bar)."""
        if self.task is not None:
            self.runner.cancel(self.task)

    def _cancelled(self, generation: int) -> None:
        # the task's token is set: the comparison stops within the tensor it is reading
        if generation != self._generation:
            return
        self.task = None
        if self.comparison is None:
            self._show_message(f"Comparing <b>{escape(self.title)}</b> was cancelled.",
                               retry=True)
        else:
            self.pages.setCurrentIndex(1)  # the last result is still good

    # -- the tree ------------------------------------------------------------------------------
    def model(self) -> DiffModel | None:
        source = self.proxy.sourceModel()
        return source if isinstance(source, DiffModel) else None

    def _show_model(self, grouped: bool) -> None:
        model = self._models.get(grouped)
        if model is None:
            return
        current = key_tree.set_tree_model(
            self.tree, model, [(STATUS, 140), (A, 150), (B, 150), (MAX_ABS, 80), (REL_L2, 72),
                               (COSINE, 96), (CHANGED_COL, 90)])
        self.apply_filter(force=True)
        if current is not None:
            self.select_key(current.key)

    def _set_grouped(self, grouped: bool) -> None:
        self._show_model(grouped)

    def apply_filter(self, force: bool = False) -> None:
        model = self.model()
        if model is None:
            return
        statuses = FILTERS[max(self.filter_buttons.checkedId(), 0)][1]
        text = self.filter_edit.text().strip()
        before = (self.proxy.statuses, self.proxy.terms)
        self.proxy.set_filter(statuses, text)
        if not force and before == (self.proxy.statuses, self.proxy.terms):
            return
        shown = 0
        if self.proxy.filtering:
            shown = sum(1 for n in model.node(QModelIndex()).walk() if self.proxy.accepts(n.entry))
            self.match_label.setText(f"{shown:,} key{'s' if shown != 1 else ''}" if shown else
                                     span("danger", "no match"))
        else:
            self.match_label.setText("")
        if self.group_box.isChecked():
            if self.proxy.filtering and shown <= AUTO_EXPAND_LIMIT:
                self.tree.expandAll()
            else:
                self._expand_changed()

    def _expand_changed(self) -> None:
        """Open the groups on the way to what changed (all of them if few keys changed)."""
        self.tree.collapseAll()
        stack = [QModelIndex()]
        opened = 0
        while stack and opened < AUTO_EXPAND_LIMIT:
            parent = stack.pop()
            for row in range(self.proxy.rowCount(parent)):
                idx = self.proxy.index(row, 0, parent)
                node = idx.data(NodeRole)
                if node.children and node.changed:
                    self.tree.expand(idx)
                    opened += 1
                    stack.append(idx)

    def current_node(self) -> DiffNode | None:
        return key_tree.current_node(self.tree)

    def select_key(self, key: str) -> bool:
        """Make the row of this key current (expanding its groups)."""
        return key_tree.select_key(self.tree, key)

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        node = current.data(NodeRole) if current.isValid() else None
        if node is not self.entry_panel.node:
            self.entry_panel.show_node(node)

    def _refresh_selection(self, *_args: Any) -> None:
        self._current_changed(self.tree.currentIndex(), QModelIndex())

    def copy_keys(self) -> None:
        key_tree.copy_keys(self.tree)

    def focus_filter(self) -> None:
        self.filter_edit.setFocus()
        self.filter_edit.selectAll()

    def _context_menu(self, pos: QPoint) -> None:
        index = self.tree.indexAt(pos)
        if not index.isValid():
            return
        node = index.data(NodeRole)
        e = node.entry
        menu = QMenu(self.tree)
        menu.addAction("Copy key", self.copy_keys)
        menu.addSeparator()
        for name, path, side in (("A", self.path_a, e.a if e else None),
                                 ("B", self.path_b, e.b if e else None)):
            action = menu.addAction(f"Show in {name} ({os.path.basename(path)})",
                                    lambda p=path, s=side: self.open_requested.emit(p, s.key))
            action.setEnabled(side is not None)
        if node.children:
            menu.addSeparator()
            menu.addAction("Expand all below", lambda: self.tree.expandRecursively(index))
        menu.exec(self.tree.viewport().mapToGlobal(pos))

    def status_text(self) -> str:
        """One line for the window's status bar."""
        c = self.comparison
        if c is None:
            return ""
        counts = c.result.counts()
        n = len(c.result.entries)
        different = n - counts[IDENTICAL]
        what = "identical" if c.result.identical else f"{different:,} differ"
        return f"comparison · {n:,} keys · {what} · compared in {c.seconds * 1000:,.0f} ms"

    def dispose(self) -> None:
        """The tab is closing: stop the work and let go of both files."""
        self._disposed = True
        self._generation += 1
        if self.task is not None:
            self.runner.cancel(self.task)
            self.task = None
        self.entry_panel.forget()
        self.proxy.setSourceModel(None)
        self._models = {}
        self.comparison = None
