"""What a file's tab and a comparison's tab share: the key tree's view, its filter field,
finding a key, copying the selected keys, and the page that says "reading…" or why not.

Both trees are node models (:class:`~ckpt_inspector.gui.tree.model.NodeTreeModel`) behind
a filtering proxy; every node has a full dotted ``key``, given by :data:`NodeRole`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html import escape
from typing import Any

from PySide6.QtCore import (
    QEvent,
    QModelIndex,
    QObject,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.gui.tree.model import NodeRole


def make_key_tree(proxy: QSortFilterProxyModel, name: str,
                  on_current: Callable[[QModelIndex, QModelIndex], None],
                  on_menu: Callable[[Any], None], on_copy: Callable[[], None],
                  on_rows_changed: Callable[..., None],
                  sort: tuple[int, Qt.SortOrder] = (-1, Qt.SortOrder.AscendingOrder)
                  ) -> QTreeView:
    """A tree view over ``proxy``: several rows selectable, sortable by clicking a header
    (first by ``sort``; -1 is the file's order), a context menu, Ctrl+C for ``on_copy``,
    and ``on_rows_changed`` when the rows change under the current one (a filter)."""
    tree = QTreeView()
    tree.setObjectName(name)
    tree.setModel(proxy)
    tree.setUniformRowHeights(True)
    tree.setAlternatingRowColors(True)
    # a cell too narrow loses its middle: keys differ at their ends (running_mean,
    # running_var), shapes and types too ([512, 512, 3, 3]: the kernel's size)
    tree.setTextElideMode(Qt.TextElideMode.ElideMiddle)
    tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
    tree.selectionModel().currentChanged.connect(on_current)
    tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
    tree.customContextMenuRequested.connect(on_menu)
    tree.header().setSortIndicator(*sort)
    tree.setSortingEnabled(True)
    tree.header().setSectionsMovable(False)
    tree.header().setStretchLastSection(False)
    tree.header().setMinimumSectionSize(50)
    for signal in (proxy.layoutChanged, proxy.rowsRemoved, proxy.modelReset):
        signal.connect(on_rows_changed)
    copy = QAction("Copy key", tree)
    copy.setShortcut(QKeySequence.StandardKey.Copy)
    copy.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
    copy.triggered.connect(on_copy)
    tree.addAction(copy)
    return tree


def set_tree_model(tree: QTreeView, model: Any, widths: list[tuple[int, int]]) -> Any:
    """Show ``model`` in ``tree`` (through its proxy) sorted as the header says, the first
    column stretched and the others ``(column, width)`` wide; returns the node that was
    current, for the caller to select again."""
    header = tree.header()
    column, order = header.sortIndicatorSection(), header.sortIndicatorOrder()
    current = current_node(tree)
    tree.model().setSourceModel(model)
    model.sort(column if 0 <= column < model.columnCount() else -1, order)
    header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
    for col, width in widths:
        header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
        header.resizeSection(col, width)
    return current


class ColumnFitter(QObject):
    """The key tree's columns sized to their content (each at most its cap), measured from
    the rows shown and from ``texts(column)`` (what a column may show in rows not yet
    expanded: the Device column's ``cuda:0 → cpu``), and measured again, growing only,
    when rows are expanded. The key column takes any slack; when the columns are too wide,
    those in ``shrink`` give way first (down to their least width), then the key column,
    down to ``key_min`` (or its content, if narrower): then the view scrolls sideways
    rather than cutting every key to "…", and ``short`` says by how much, so that the
    panels beside the tree can yield."""

    short = Signal(int)  # pixels the columns lack at their least widths (0: they fit)

    def __init__(self, tree: QTreeView, key_min: int, caps: dict[int, int],
                 shrink: list[tuple[int, int]],
                 texts: Callable[[int], list[str]] | None = None):
        super().__init__(tree)
        self.tree, self.key_min, self.caps, self.shrink = tree, key_min, caps, shrink
        self.texts = texts or (lambda _col: [])
        self.wanted: dict[int, int] = {}
        self.lacking = 0
        self._grow = QTimer(self)
        self._grow.setSingleShot(True)
        self._grow.setInterval(0)  # once, after a burst of expansions (Expand all below)
        self._grow.timeout.connect(self.grow)
        tree.expanded.connect(lambda _i: self._grow.start())
        tree.viewport().installEventFilter(self)

    def _need(self, col: int) -> int:
        """A column's content width: its cells' (as Qt samples the rows shown), its
        title's, and the widest of ``texts(col)``."""
        header = self.tree.header()
        metrics = self.tree.fontMetrics()
        texts = max((metrics.horizontalAdvance(t) + 20 for t in self.texts(col)), default=0)
        return max(self.tree.sizeHintForColumn(col) + 12, header.sectionSizeHint(col), texts)

    def _measure(self) -> dict[int, int]:
        least = self.tree.header().minimumSectionSize()
        wanted = {col: max(least, min(cap, self._need(col))) for col, cap in self.caps.items()
                  if not self.tree.isColumnHidden(col)}
        wanted[0] = max(least, self._need(0))
        return wanted

    def fit(self) -> None:
        """Measure the columns afresh (a new tree) and share the width."""
        header = self.tree.header()
        # a new model's sections, some hidden since: Qt counts a hidden section's old width
        # in the header's length (a sideways scroll bar over nothing) unless its sections
        # are laid out before they are resized
        for col in range(header.count()):
            header.sectionSize(col)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)
        self.wanted = self._measure()
        self.fit_key()

    def grow(self) -> None:
        """Rows were expanded, or a column's texts changed: columns whose content got
        wider grow (none narrows, so nothing jumps under the pointer)."""
        if not self.wanted:
            return
        for col, width in self._measure().items():
            self.wanted[col] = max(width, self.wanted.get(col, 0))
        self.fit_key()

    def fit_key(self) -> None:
        if not self.wanted:
            return
        header = self.tree.header()
        widths = {c: w for c, w in self.wanted.items() if not self.tree.isColumnHidden(c)}
        room = self.tree.viewport().width()
        over = sum(widths.values()) - room
        for col, least in self.shrink:  # too wide: these give way, in turn
            if over <= 0:
                break
            if col in widths:
                give = min(over, max(0, widths[col] - least))
                widths[col] -= give
                over -= give
        # over < 0: the key column takes the slack; over > 0: it gives way, to a floor
        widths[0] = max(min(self.key_min, widths[0]), widths[0] - over)
        for col, width in widths.items():
            header.resizeSection(col, width)
        lacking = max(0, sum(widths.values()) - room)
        if lacking != self.lacking:
            self.lacking = lacking
            self.short.emit(lacking)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Resize:
            self.fit_key()
        return False


class ElideMiddle(QStyledItemDelegate):
    """Cells cut in the middle ("global_st…rank_1_optim_states.pt"): for file names that
    differ only near their end."""

    def initStyleOption(self, option: QStyleOptionViewItem, index: Any) -> None:
        super().initStyleOption(option, index)
        option.textElideMode = Qt.TextElideMode.ElideMiddle


def make_filter_edit(name: str, placeholder: str, apply: Callable[[], None], delay_ms: int,
                     parent: QWidget) -> QLineEdit:
    """A filter field that applies ``apply`` ``delay_ms`` after the last key typed, or at
    once on Enter."""
    edit = QLineEdit()
    edit.setObjectName(name)
    edit.setPlaceholderText(placeholder)
    edit.setClearButtonEnabled(True)
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(delay_ms)
    timer.timeout.connect(apply)
    edit.textChanged.connect(lambda _t: timer.start())
    edit.returnPressed.connect(apply)
    return edit


def find_key(proxy: QSortFilterProxyModel, key: str) -> QModelIndex:
    """The row (a proxy index) of the node with this full key; invalid if not shown."""
    stack = [QModelIndex()]
    while stack:
        parent = stack.pop()
        for row in range(proxy.rowCount(parent)):
            idx = proxy.index(row, 0, parent)
            node = idx.data(NodeRole)
            if node.key == key:
                return idx
            if key.startswith(node.key + ".") or not node.key:
                stack.append(idx)
    return QModelIndex()


def select_key(tree: QTreeView, key: str) -> bool:
    """Make the row with this full key current (expanding its parents), in the middle."""
    idx = find_key(tree.model(), key)
    if not idx.isValid():
        return False
    tree.setCurrentIndex(idx)
    tree.scrollTo(idx, QAbstractItemView.ScrollHint.PositionAtCenter)
    return True


def current_node(tree: QTreeView) -> Any:
    index = tree.currentIndex()
    return index.data(NodeRole) if index.isValid() else None


def selected_nodes(tree: QTreeView) -> list[Any]:
    """The nodes of the selected rows, or the current row's."""
    model = tree.selectionModel()
    nodes = [i.data(NodeRole) for i in model.selectedRows(0)] if model else []
    current = current_node(tree)
    return nodes or ([current] if current is not None else [])


def copy_keys(tree: QTreeView) -> None:
    nodes = selected_nodes(tree)
    if nodes:
        QGuiApplication.clipboard().setText("\n".join(n.key for n in nodes))


LONG_WORD = 24  # longer runs without a space may break after / . _ - (or anywhere)
MESSAGE_WIDTH = 720  # a message page's text: a readable measure, centred


def wrappable(text: str) -> str:
    """HTML for a message that a word-wrapped label can always wrap: long paths and names
    may break after ``/ . _ -`` (and, lacking those, every few characters)."""

    def soften(match: re.Match[str]) -> str:
        word = re.sub(r"([/._\-])", "\\1\u200b", match.group(0))
        return "\u200b".join(part if len(part) <= LONG_WORD else "\u200b".join(
            part[i:i + LONG_WORD] for i in range(0, len(part), LONG_WORD))
            for part in word.split("\u200b"))

    return escape(re.sub(rf"\S{{{LONG_WORD + 1},}}", soften, text))


class MessagePage(QWidget):
    """A centred message ("reading…", an error, "cancelled") with a button to try again,
    and, if asked for, a progress bar."""

    def __init__(self, name: str, retry: str, on_retry: Callable[[], None],
                 progress: bool = False, parent: QWidget | None = None,
                 on_cancel: Callable[[], None] | None = None):
        super().__init__(parent)
        self.label = QLabel()
        self.label.setObjectName(name)
        self.label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setMaximumWidth(MESSAGE_WIDTH)
        self.button = QPushButton(retry)
        self.button.clicked.connect(on_retry)
        self.progress: QProgressBar | None = None
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        # centred by stretches, not by an alignment flag: an aligned word-wrapped label
        # keeps the height of its first text, and cuts a longer one off
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.label, 100)
        row.addStretch(1)
        layout.addLayout(row)
        if progress:
            self.progress = QProgressBar()
            self.progress.setMaximumWidth(360)
            layout.addWidget(self.progress, 0, Qt.AlignmentFlag.AlignHCenter)
        # Cancel beside the progress it stops, not only in the status bar
        self.cancel_button: QPushButton | None = None
        if on_cancel is not None:
            self.cancel_button = QPushButton("Cancel")
            self.cancel_button.clicked.connect(on_cancel)
            layout.addWidget(self.cancel_button, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addWidget(self.button, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addStretch(2)

    def show_message(self, html: str, retry: bool, progress: bool = False) -> None:
        self.label.setText(html)
        self.button.setVisible(retry)
        if self.progress is not None:
            self.progress.setVisible(progress)
        if self.cancel_button is not None:
            self.cancel_button.setVisible(progress)


AUTO_EXPAND_LIMIT = 400  # groups opened by themselves after a filter, at most


def show_filtered(tree: QTreeView, proxy: Any, shown: Callable[[], int], label: Any,
                  grouped: bool, of_note: Callable[[Any], bool]) -> None:
    """After a comparison's or a check's filter changed: ``label`` counts the keys it lets
    through (``shown()``: counted only while it filters), and a grouped tree opens every
    group when few keys match, else the groups on the way to the rows ``of_note`` (what
    changed, what fails loading)."""
    from ckpt_inspector.gui.theme import span

    count = shown() if proxy.filtering else 0
    if proxy.filtering:
        label.setText(f"{count:,} key{'s' if count != 1 else ''}" if count
                      else span("danger", "no match"))
    else:
        label.setText("")
    if not grouped:
        return
    if proxy.filtering and count <= AUTO_EXPAND_LIMIT:
        tree.expandAll()
        return
    tree.collapseAll()
    stack, opened = [QModelIndex()], 0
    while stack and opened < AUTO_EXPAND_LIMIT:
        parent = stack.pop()
        for row in range(proxy.rowCount(parent)):
            idx = proxy.index(row, 0, parent)
            node = idx.data(NodeRole)
            if node.children and of_note(node):
                tree.expand(idx)
                opened += 1
                stack.append(idx)
