"""One open file: security banner, filter, the key tree, and the summary/selection panels."""

from __future__ import annotations

import os
from html import escape
from typing import Any

from PySide6.QtCore import QModelIndex, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QSplitter,
    QStackedWidget,
    QTextBrowser,
    QToolButton,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core import query as query_mod
from ckpt_inspector.core.display import DisplayNode
from ckpt_inspector.gui.errors import ErrorReporter
from ckpt_inspector.gui.loading import LoadedFile, load_file, release_file
from ckpt_inspector.gui.panels import details_html, summary_html
from ckpt_inspector.gui.tree_model import (
    DEVICE,
    ELEMENTS,
    KEY,
    SHAPE,
    SIZE,
    TYPE,
    CheckpointModel,
    FilterProxy,
    NodeRole,
    shape_text,
)
from ckpt_inspector.gui.workers import TaskRunner

FILTER_HELP = (
    "<b>Filter syntax</b> (terms separated by spaces must all match)<br>"
    "<code>conv</code> — key contains 'conv' (case-insensitive)<br>"
    "<code>re:^layer[12]\\.</code> or <code>/bias$/</code> — regular expression on the key<br>"
    "<code>shape:768x768</code>, <code>shape:*x768</code>, <code>shape:[]</code> — tensor shape<br>"
    "<code>dtype:bf16</code>, <code>dtype:float8</code> — dtype or alias (fp16, fp32, half, …)<br>"
    "<code>device:cuda</code> — saved device &nbsp; <code>role:buffer</code> — parameter, buffer"
)
DEBOUNCE_MS = 200
AUTO_EXPAND_LIMIT = 400


class CheckpointView(QWidget):
    """A tab. Reading happens on a worker; a result for an older request is dropped."""

    loaded = Signal(object)  # LoadedFile, once the tree is shown
    failed = Signal(str)

    def __init__(self, path: str, runner: TaskRunner, reporter: ErrorReporter,
                 target_device: str = "cpu", parent: QWidget | None = None):
        super().__init__(parent)
        self.path = os.path.abspath(path)
        self.runner = runner
        self.reporter = reporter
        self.target_device = target_device
        self.file: LoadedFile | None = None
        self._generation = 0
        self._disposed = False
        self._models: dict[bool, CheckpointModel] = {}
        self._build()

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.banner = QLabel()
        self.banner.setObjectName("securityBanner")
        self.banner.setWordWrap(True)
        self.banner.setTextFormat(Qt.TextFormat.RichText)
        self.banner.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.hide()

        self.filter_edit = QLineEdit()
        self.filter_edit.setObjectName("filterEdit")
        self.filter_edit.setPlaceholderText(
            "Filter keys   (text, re:pattern, shape:768x768, dtype:bf16 — ? for help)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.setToolTip(FILTER_HELP)
        self.filter_help = QToolButton()
        self.filter_help.setText("?")
        self.filter_help.setToolTip(FILTER_HELP)
        self.filter_help.setAutoRaise(True)
        self.filter_help.clicked.connect(self._show_filter_help)
        self.match_label = QLabel()
        self.match_label.setObjectName("matchLabel")
        self.match_label.setMinimumWidth(110)
        self.group_box = QCheckBox("Group by module")
        self.group_box.setChecked(True)
        self.group_box.setToolTip("Group dotted state_dict keys (layer1.0.conv1.weight) into "
                                  "a module tree; untick for the file's flat keys")
        self.group_box.toggled.connect(self._set_grouped)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.apply_filter)
        self.filter_edit.textChanged.connect(lambda _t: self._debounce.start())
        self.filter_edit.returnPressed.connect(self.apply_filter)

        filter_row = QHBoxLayout()
        filter_row.setContentsMargins(0, 0, 0, 0)
        filter_row.addWidget(self.filter_edit, 1)
        filter_row.addWidget(self.filter_help)
        filter_row.addWidget(self.match_label)
        filter_row.addWidget(self.group_box)

        self.proxy = FilterProxy(self)
        self.tree = QTreeView()
        self.tree.setObjectName("keyTree")
        self.tree.setModel(self.proxy)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.selectionModel().currentChanged.connect(self._current_changed)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self.tree.header().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.tree.setSortingEnabled(True)
        self.tree.header().setSectionsMovable(False)
        self.tree.header().setStretchLastSection(False)
        copy = QAction("Copy key", self.tree)
        copy.setShortcut(QKeySequence.StandardKey.Copy)
        copy.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        copy.triggered.connect(self.copy_keys)
        self.tree.addAction(copy)

        self.status = QLabel("Reading…")
        self.status.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.status.setObjectName("viewStatus")
        self.status.setWordWrap(True)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.status)
        self.stack.addWidget(self.tree)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.setSpacing(4)
        lv.addWidget(self.banner)
        lv.addLayout(filter_row)
        lv.addWidget(self.stack, 1)

        self.summary = QTextBrowser()
        self.summary.setObjectName("summaryPanel")
        self.summary.setOpenLinks(False)
        self.details = QTextBrowser()
        self.details.setObjectName("detailsPanel")
        self.details.setHtml(details_html(None, self.target_device))
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(self.summary)
        side.addWidget(self.details)
        side.setStretchFactor(0, 3)
        side.setStretchFactor(1, 1)

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(side)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([950, 330])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.splitter)

    # -- loading -------------------------------------------------------------------------------
    def start_loading(self) -> None:
        self._generation += 1
        generation = self._generation
        self.stack.setCurrentWidget(self.status)
        self.status.setText(f"Reading {escape(os.path.basename(self.path))}…")
        self.runner.run(f"Reading {os.path.basename(self.path)}", load_file, self.path,
                        on_result=lambda r: self._loaded(r, generation),
                        on_error=lambda e: self._failed(e, generation),
                        on_discard=release_file)

    def _loaded(self, file: LoadedFile, generation: int) -> None:
        if generation != self._generation or self._disposed:
            release_file(file)  # superseded by a newer request, or the tab is gone
            return
        previous, old_models = self.file, list(self._models.values())
        self.file = file
        self._models = {True: CheckpointModel(file.grouped, self),
                        False: CheckpointModel(file.flat, self)}
        dangerous = {f.name for f in file.report.findings
                     if f.severity == "dangerous" and f.name}
        for model in self._models.values():
            model.set_target_device(self.target_device)
            model.dangerous = dangerous
        self._show_model(self.group_box.isChecked())
        self.summary.setHtml(summary_html(file))
        self._show_banner(file)
        self.stack.setCurrentWidget(self.tree)
        for model in old_models:
            model.deleteLater()
        if previous is not None:
            release_file(previous)
        self.loaded.emit(file)

    def _failed(self, err: BaseException, generation: int) -> None:
        if generation != self._generation:
            return
        from ckpt_inspector.gui.errors import describe

        message, _details = describe(err)
        self.status.setText(f"<b>Could not read {escape(os.path.basename(self.path))}</b>"
                            f"<br><br>{escape(message)}")
        self.reporter.report("Could not open the file", err, self.path)
        self.failed.emit(message)

    def _show_model(self, grouped: bool) -> None:
        model = self._models.get(grouped)
        if model is None:
            return
        self.proxy.setSourceModel(model)
        self.tree.header().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        model.sort(-1)
        header = self.tree.header()
        header.setMinimumSectionSize(50)
        header.setSectionResizeMode(KEY, QHeaderView.ResizeMode.Stretch)
        for col, width in ((TYPE, 120), (SHAPE, 150), (ELEMENTS, 95), (SIZE, 80),
                           (DEVICE, 75)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(col, width)
        self.apply_filter()
        if not self.filter_edit.text().strip():
            self._expand_top()

    def _expand_top(self) -> None:
        """Show the first level of every top-level container: a file at a glance."""
        root = QModelIndex()
        rows = self.proxy.rowCount(root)
        if rows == 1:
            self.tree.expand(self.proxy.index(0, 0, root))
        for row in range(min(rows, 50)):
            idx = self.proxy.index(row, 0, root)
            if self.proxy.rowCount(idx) <= 64:
                self.tree.expand(idx)

    def _show_banner(self, file: LoadedFile) -> None:
        report = file.report
        if report.verdict == "safe":
            self.banner.hide()
            return
        names = report.flagged_names()
        shown = ", ".join(f"<code>{escape(n)}</code>" for n in names[:6])
        more = f" and {len(names) - 6} more" if len(names) > 6 else ""
        if report.verdict == "dangerous":
            first = next(f for f in report.findings if f.severity == "dangerous")
            where = f" (byte {first.offset} of {escape(first.member or 'the file')})" \
                if first.offset is not None else ""
            text = (f"<b>Dangerous file.</b> {escape(first.message)}{where}. "
                    "It is shown read-only; ckpt-inspector has not run any of it. "
                    "Do not load it with torch.")
            style = "background:#fdecea; color:#7f1d1d; border:1px solid #f5c2c0;"
        else:
            what = f"It imports {shown}{more}" if names else "It contains code"
            extra = f" {escape(file.ckpt.runs_code)}." if file.ckpt.runs_code else ""
            text = (f"<b>Needs trust.</b> {what}: loading it with torch would run that code."
                    f"{extra} ckpt-inspector only reads it, read-only.")
            style = "background:#fff4e0; color:#78350f; border:1px solid #f6d7a7;"
        self.banner.setStyleSheet(f"QLabel#securityBanner {{ {style} padding:8px; "
                                  "border-radius:4px; }")
        self.banner.setText(text)
        self.banner.show()

    # -- interaction ---------------------------------------------------------------------------
    def apply_filter(self) -> None:
        model = self.proxy.sourceModel()
        if not isinstance(model, CheckpointModel):
            return
        text = self.filter_edit.text().strip()
        try:
            q = query_mod.parse(text)
        except query_mod.QueryError as err:
            self.match_label.setText(f"<span style='color:#b71c1c'>{escape(str(err))}</span>")
            self.match_label.setToolTip(str(err))
            return
        self.match_label.setToolTip("")
        if q.empty:
            self.proxy.set_matches(None)
            self.match_label.setText("")
            return
        matches = query_mod.matching(model.node(QModelIndex()), q)
        self.proxy.set_matches(query_mod.visible_ids(matches))
        self.match_label.setText(f"{len(matches):,} match{'es' if len(matches) != 1 else ''}")
        if len(matches) <= AUTO_EXPAND_LIMIT:
            self.tree.expandAll()

    def _set_grouped(self, grouped: bool) -> None:
        if self.file is not None:
            self._show_model(grouped)

    def set_target_device(self, device: str) -> None:
        self.target_device = device
        for model in self._models.values():
            model.set_target_device(device)
        self._current_changed(self.tree.currentIndex(), QModelIndex())

    def focus_filter(self) -> None:
        self.filter_edit.setFocus()
        self.filter_edit.selectAll()

    def current_node(self) -> DisplayNode | None:
        index = self.tree.currentIndex()
        return index.data(NodeRole) if index.isValid() else None

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        node = current.data(NodeRole) if current.isValid() else None
        self.details.setHtml(details_html(node, self.target_device))

    def _selected_nodes(self) -> list[DisplayNode]:
        rows = self.tree.selectionModel().selectedRows(0) if self.tree.selectionModel() else []
        nodes = [i.data(NodeRole) for i in rows]
        if not nodes and self.current_node() is not None:
            nodes = [self.current_node()]
        return nodes

    def copy_keys(self) -> None:
        nodes = self._selected_nodes()
        if nodes:
            QGuiApplication.clipboard().setText("\n".join(n.key for n in nodes))

    def copy_shapes(self) -> None:
        nodes = self._selected_nodes()
        if nodes:
            QGuiApplication.clipboard().setText("\n".join(shape_text(n) for n in nodes))

    def _context_menu(self, pos: QPoint) -> None:
        index = self.tree.indexAt(pos)
        if not index.isValid():
            return
        menu = QMenu(self.tree)
        menu.addAction("Copy key", self.copy_keys)
        menu.addAction("Copy shape / value", self.copy_shapes)
        menu.addSeparator()
        menu.addAction("Expand all below", lambda: self.tree.expandRecursively(index))
        menu.addAction("Collapse", lambda: self.tree.collapse(index))
        menu.exec(self.tree.viewport().mapToGlobal(pos))

    def _show_filter_help(self) -> None:
        from PySide6.QtWidgets import QToolTip

        QToolTip.showText(self.filter_help.mapToGlobal(QPoint(0, self.filter_help.height())),
                          FILTER_HELP, self.filter_help)

    def model(self) -> Any:
        return self.proxy.sourceModel()

    def dispose(self) -> None:
        """The tab is closing: detach the views from the trees, then free the trees."""
        self._disposed = True
        self._generation += 1
        self.proxy.setSourceModel(None)
        self._models = {}
        if self.file is not None:
            release_file(self.file)
            self.file = None
