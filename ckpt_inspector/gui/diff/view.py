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
from html import escape
from typing import Any

from PySide6.QtCore import (
    QEvent,
    QModelIndex,
    QPoint,
    Qt,
    Signal,
)
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.ops import diff as core_diff
from ckpt_inspector.core.ops.diff import (
    IDENTICAL,
)
from ckpt_inspector.core.ops.difftree import (
    Comparison,
    DiffNode,
    MatchOptions,
    compare_files,
)
from ckpt_inspector.core.progress import Progress
from ckpt_inspector.gui.analysis import Analysis
from ckpt_inspector.gui.diff.entry_panel import EntryPanel, column
from ckpt_inspector.gui.diff.model import (
    ALL,
    CHANGED_COL,
    COSINE,
    FILTERS,
    MAX_ABS,
    REL_L2,
    STATUS,
    A,
    B,
    DiffFilter,
    DiffModel,
)
from ckpt_inspector.gui.errors import ErrorReporter, describe
from ckpt_inspector.gui.html.diff import summary_html
from ckpt_inspector.gui.jobs import JobRunner, Task
from ckpt_inspector.gui.remote import is_url, name_of, normalize
from ckpt_inspector.gui.theme import color, is_palette_change, span
from ckpt_inspector.gui.tree import widgets as key_tree
from ckpt_inspector.gui.tree.model import NodeRole

DEBOUNCE_MS = 150
KEY_MIN = 160  # the Key column's least width: below it the tree scrolls sideways
COLUMN_CAPS = {STATUS: 150, A: 200, B: 200, MAX_ABS: 100, REL_L2: 90, COSINE: 120,
               CHANGED_COL: 110}
COLUMNS_GIVE_WAY = [(A, 100), (B, 100), (STATUS, 90)]  # in turn, to the least width


def tab_title(path_a: str, path_b: str) -> str:
    """``a.pt ↔ b.pt``; with the folder where both files have the same name."""
    a, b = name_of(path_a), name_of(path_b)
    if a == b and not is_url(path_a) and not is_url(path_b):
        a = os.path.join(os.path.basename(os.path.dirname(path_a)), a)
        b = os.path.join(os.path.basename(os.path.dirname(path_b)), b)
    return f"{a} ↔ {b}"


class DiffView(QWidget):
    """A tab comparing two files. ``shown(comparison)`` once the result is on screen;
    ``open_requested(path, key)`` when the user asks to see a key in one of the files."""

    shown = Signal(object)
    failed = Signal(str)
    open_requested = Signal(str, str)

    def __init__(self, path_a: str, path_b: str, runner: JobRunner, reporter: ErrorReporter,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.path_a = normalize(path_a)  # a URL stays as it is
        self.path_b = normalize(path_b)
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

        # columns as wide as their content; the key column takes the slack, A and B and
        # the status give way first in a narrow window
        self.columns = key_tree.ColumnFitter(self.tree, KEY_MIN, COLUMN_CAPS, COLUMNS_GIVE_WAY)
        left = column(filter_row, self.tree, spacing=4)
        self.entry_panel = EntryPanel(Analysis(self.runner, self))
        self.entry_panel.key_requested.connect(self.select_key)
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
        self.entry_panel.set_comparison(c)
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
                           f"{key_tree.wrappable(message)}", retry=True)
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
        current = key_tree.set_tree_model(self.tree, model, [])
        self.apply_filter(force=True)
        self.columns.fit()
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
        key_tree.show_filtered(
            self.tree, self.proxy,
            lambda: sum(1 for n in model.node(QModelIndex()).walk()
                        if self.proxy.accepts(n.entry)),
            self.match_label, self.group_box.isChecked(), lambda node: node.changed)

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
            action = menu.addAction(f"Show in {name} ({name_of(path)})",
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
