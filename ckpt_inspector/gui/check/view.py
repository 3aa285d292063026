"""A check in a tab: will this checkpoint load into that model with
``load_state_dict(strict=True)``, which keys stop it, and the fix.

The check runs as ``ckpt-inspector check ... --json`` in a child process (building the
model imports torch, which the window never does), with its progress in the status bar
and Cancel; the result is the header, the fix with its code and a Copy button, and a tree
of every key of both sides coloured as the comparison tab colours it (missing, unexpected,
size mismatch, dtype), filtered by status and key, flat or grouped by module.
"""

from __future__ import annotations

from html import escape
from typing import Any

from PySide6.QtCore import QEvent, QModelIndex, QPoint, Qt, Signal
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.ops.check.report import FAILING, CheckReport
from ckpt_inspector.core.ops.check.request import CheckRequest
from ckpt_inspector.core.ops.check.rows import CheckNode, build_tree
from ckpt_inspector.gui.check.model import (
    ALL,
    CHECKPOINT,
    FILTERS,
    MODEL,
    STATUS,
    CheckFilter,
    CheckModel,
)
from ckpt_inspector.gui.errors import ErrorReporter
from ckpt_inspector.gui.html.check import fix_html, node_html, summary_html
from ckpt_inspector.gui.jobs import JobRunner, Task
from ckpt_inspector.gui.remote import name_of
from ckpt_inspector.gui.theme import color, is_palette_change, span
from ckpt_inspector.gui.tree import widgets as key_tree
from ckpt_inspector.gui.tree.model import NodeRole

DEBOUNCE_MS = 150
CODE_LINES = 6  # the fix's code box shows this many lines before it scrolls


def tab_title(request: CheckRequest) -> str:
    if request.builder:
        model = request.builder.rpartition(":")[2] + "()"
    else:
        model = request.arch or name_of(request.against)
    return f"{name_of(request.path)} → {model}"


class CheckView(QWidget):
    """A tab checking a checkpoint against a model. ``shown(report)`` once the result is on
    screen; ``open_requested(path, key)`` to show a key in the checkpoint's own tab."""

    shown = Signal(object)
    failed = Signal(str)
    open_requested = Signal(str, str)

    def __init__(self, request: CheckRequest, runner: JobRunner, reporter: ErrorReporter,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.request = request
        self.runner = runner
        self.reporter = reporter
        self.report: CheckReport | None = None
        self.task: Task | None = None
        self._generation = 0
        self._models: dict[bool, CheckModel] = {}
        self._build()

    @property
    def title(self) -> str:
        return tab_title(self.request)

    # -- layout ------------------------------------------------------------------------------
    def _build(self) -> None:
        self.header = QLabel()
        self.header.setObjectName("checkHeader")
        self.header.setTextFormat(Qt.TextFormat.RichText)
        self.header.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.header.setWordWrap(True)

        self.fix_label = QLabel()
        self.fix_label.setObjectName("checkFix")
        self.fix_label.setTextFormat(Qt.TextFormat.RichText)
        self.fix_label.setWordWrap(True)
        self.fix_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.fix_code = QPlainTextEdit()
        self.fix_code.setObjectName("checkFixCode")
        self.fix_code.setReadOnly(True)
        self.fix_code.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.fix_code.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        lines = self.fix_code.fontMetrics().lineSpacing()
        self.fix_code.setFixedHeight(lines * CODE_LINES + 12)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setObjectName("checkCopyFix")
        self.copy_button.setToolTip("Copy the fix's Python code")
        self.copy_button.clicked.connect(self.copy_fix)
        code_row = QHBoxLayout()
        code_row.setContentsMargins(0, 0, 0, 0)
        code_row.addWidget(self.fix_code, 1)
        code_row.addWidget(self.copy_button, 0, Qt.AlignmentFlag.AlignTop)
        self.fix_box = QWidget()
        fix_layout = QVBoxLayout(self.fix_box)
        fix_layout.setContentsMargins(0, 0, 0, 0)
        fix_layout.setSpacing(4)
        fix_layout.addWidget(self.fix_label)
        fix_layout.addLayout(code_row)
        self._style_boxes()

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
            button.setObjectName(f"checkFilter{text.split()[0]}")
            self.filter_buttons.addButton(button, i)
            filter_row.addWidget(button)
        self.filter_buttons.button(ALL).setChecked(True)
        self.filter_buttons.idToggled.connect(lambda _i, on: on and self.apply_filter())
        filter_row.addSpacing(8)
        self.filter_edit = key_tree.make_filter_edit(
            "checkFilterEdit", "Filter keys (words, all must match)", self.apply_filter,
            DEBOUNCE_MS, self)
        filter_row.addWidget(self.filter_edit, 1)
        self.match_label = QLabel()
        filter_row.addWidget(self.match_label)
        self.group_box = QCheckBox("Group by module")
        self.group_box.setChecked(True)
        self.group_box.toggled.connect(self._show_model)
        filter_row.addWidget(self.group_box)

        self.proxy = CheckFilter(self)
        self.tree = key_tree.make_key_tree(self.proxy, "checkTree", self._current_changed,
                                           self._context_menu, self.copy_keys,
                                           self._refresh_selection)
        self.details = QLabel()
        self.details.setObjectName("checkDetails")
        self.details.setTextFormat(Qt.TextFormat.RichText)
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setMinimumHeight(self.details.fontMetrics().lineSpacing() * 4)

        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.header)
        layout.addWidget(self.fix_box)
        layout.addLayout(filter_row)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.details)

        self.message_page = key_tree.MessagePage("checkMessage", "Check again", self.start,
                                                  progress=True, on_cancel=self.cancel)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.message_page)
        self.pages.addWidget(body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(6, 6, 6, 6)
        outer.addWidget(self.pages)

    def changeEvent(self, event: QEvent) -> None:
        """A theme switch: the boxes and the rich text in its colours."""
        super().changeEvent(event)
        if is_palette_change(event):
            self._style_boxes()
            if self.report is not None:
                self._show_texts(self.report)

    def _style_boxes(self) -> None:
        box = (f"background:{color('panel_bg')}; border:1px solid {color('panel_border')}; "
               "border-radius:4px; padding:6px;")
        self.header.setStyleSheet(f"QLabel#checkHeader {{ {box} }}")

    # -- checking ------------------------------------------------------------------------------
    def start(self) -> None:
        """Run the check in a child process (again, if it ran)."""
        if self.task is not None:
            self.runner.cancel(self.task)
        self._generation += 1
        generation = self._generation
        what = escape(self.title)
        self.message_page.show_message(
            f"Checking <b>{what}</b>…<br><br>" + span(
                "muted", "building the model on the meta device (nothing is allocated or "
                         "downloaded) and loading the checkpoint's shapes into it"),
            retry=False, progress=True)
        if self.message_page.progress is not None:
            self.message_page.progress.setRange(0, 0)
        self.pages.setCurrentIndex(0)
        self.task = self.runner.run_child(
            f"Checking {self.title}", self.request.to_argv(), ok_codes=(0, 1),
            on_result=lambda r: self._done(r, generation),
            on_error=lambda e: self._failed(e, generation),
            on_cancel=lambda: self._cancelled(generation))

    def _done(self, result: dict[str, Any], generation: int) -> None:
        if generation != self._generation:
            return
        self.task = None
        self.show_report(CheckReport.from_json(result))

    def show_report(self, report: CheckReport) -> None:
        self.report = report
        old = list(self._models.values())
        self._models = {True: CheckModel(build_tree(report.rows, True), self),
                        False: CheckModel(build_tree(report.rows, False), self)}
        self._show_texts(report)
        counts = report.counts()
        for i, (text, statuses, _tip) in enumerate(FILTERS):
            n = len(report.rows) if statuses is None else sum(counts[s] for s in statuses)
            button = self.filter_buttons.button(i)
            button.setText(f"{text}  {n:,}")
            button.setEnabled(bool(n) or i == ALL)
        self._show_model(self.group_box.isChecked())
        self.pages.setCurrentIndex(1)
        for model in old:
            model.deleteLater()
        self.shown.emit(report)

    def _show_texts(self, report: CheckReport) -> None:
        self.header.setText(summary_html(report))
        fix = report.fix
        self.fix_box.setVisible(fix is not None)
        if fix is not None:
            self.fix_label.setText(fix_html(report))
            self.fix_code.setPlainText(fix.code)
            self.fix_code.setVisible(bool(fix.code))
            self.copy_button.setVisible(bool(fix.code))
            height = self.fix_code.fontMetrics().lineSpacing() * min(
                CODE_LINES, max(1, fix.code.count("\n") + 1)) + 14
            self.fix_code.setFixedHeight(height)
        self._current_changed(self.tree.currentIndex(), QModelIndex())

    def _failed(self, err: BaseException, generation: int) -> None:
        if generation != self._generation:
            return
        self.task = None
        message = str(err)
        self.message_page.show_message(
            f"<b>Could not check {escape(self.title)}</b><br><br>"
            f"{key_tree.wrappable(message)}", retry=True)
        self.pages.setCurrentIndex(0)
        self.failed.emit(message)

    def cancel(self) -> None:
        if self.task is not None:
            self.runner.cancel(self.task)

    def _cancelled(self, generation: int) -> None:
        if generation != self._generation:
            return
        self.task = None
        if self.report is None:
            self.message_page.show_message(
                f"Checking <b>{escape(self.title)}</b> was cancelled.", retry=True)
        else:
            self.pages.setCurrentIndex(1)

    # -- the tree ------------------------------------------------------------------------------
    def model(self) -> CheckModel | None:
        source = self.proxy.sourceModel()
        return source if isinstance(source, CheckModel) else None

    def _show_model(self, grouped: bool) -> None:
        model = self._models.get(grouped)
        if model is None:
            return
        current = key_tree.set_tree_model(self.tree, model,
                                          [(STATUS, 130), (CHECKPOINT, 170), (MODEL, 170)])
        self.apply_filter(force=True)
        if current is not None:
            self.select_key(current.key)

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
            lambda: sum(1 for n in model.node(QModelIndex()).walk() if self.proxy.accepts(n)),
            self.match_label, self.group_box.isChecked(), lambda node: node.failing)

    def current_node(self) -> CheckNode | None:
        return key_tree.current_node(self.tree)

    def select_key(self, key: str) -> bool:
        return key_tree.select_key(self.tree, key)

    def _current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        node = current.data(NodeRole) if current.isValid() else None
        self.details.setText(node_html(node) if node is not None else span(
            "muted", "Select a key to see both sides."))

    def _refresh_selection(self, *_args: Any) -> None:
        self._current_changed(self.tree.currentIndex(), QModelIndex())

    def copy_keys(self) -> None:
        key_tree.copy_keys(self.tree)

    def copy_fix(self) -> None:
        if self.report is not None and self.report.fix is not None:
            QGuiApplication.clipboard().setText(self.report.fix.code)

    def focus_filter(self) -> None:
        self.filter_edit.setFocus()
        self.filter_edit.selectAll()

    def _context_menu(self, pos: QPoint) -> None:
        index = self.tree.indexAt(pos)
        if not index.isValid():
            return
        node = index.data(NodeRole)
        menu = QMenu(self.tree)
        menu.addAction("Copy key", self.copy_keys)
        in_file = node.entry is not None and node.entry.checkpoint is not None
        key = f"{self.report.key}.{node.key}" if self.report and self.report.key else node.key
        action = menu.addAction(f"Show in {name_of(self.request.path)}",
                                lambda: self.open_requested.emit(self.request.path, key))
        action.setEnabled(in_file)
        if node.children:
            menu.addSeparator()
            menu.addAction("Expand all below", lambda: self.tree.expandRecursively(index))
        menu.exec(self.tree.viewport().mapToGlobal(pos))

    def status_text(self) -> str:
        """One line for the window's status bar."""
        r = self.report
        if r is None:
            return ""
        failing = sum(1 for row in r.rows if row.status in FAILING)
        what = "loads (strict)" if r.compatible else f"{failing:,} keys stop strict loading"
        return f"check · {len(r.rows):,} keys · {what}"

    def dispose(self) -> None:
        """The tab is closing: stop the child."""
        self._generation += 1
        if self.task is not None:
            self.runner.cancel(self.task)
            self.task = None
        self.proxy.setSourceModel(None)
        self._models = {}
