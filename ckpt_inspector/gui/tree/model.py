"""Qt item models over the core's display tree: no checkpoint logic here, only presentation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from PySide6.QtCore import (
    QAbstractItemModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
)
from PySide6.QtGui import QFont

from ckpt_inspector.core.display import DisplayNode
from ckpt_inspector.core.keytree import natural_key
from ckpt_inspector.core.summary import format_value, human_bytes
from ckpt_inspector.gui.theme import brush

COLUMNS = ("Key", "Type", "Shape / value", "Elements", "Size", "Device", "File")
KEY, TYPE, SHAPE, ELEMENTS, SIZE, DEVICE, FILE = range(len(COLUMNS))
NodeRole = Qt.ItemDataRole.UserRole + 1
MAX_TIP_FILES = 12  # files named in a row's tooltip

_RIGHT = int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)


def _order(node: Any) -> int:
    return node.order


def short_type(name: str) -> str:
    return name.rsplit(".", 1)[-1] if name else ""


def type_text(d: DisplayNode) -> str:
    node = d.node
    if node is None:
        return "module"  # a group of dotted state_dict keys
    if node.tensor is not None:
        t = node.tensor
        extra = []
        if node.role == "parameter" or t.is_parameter:
            extra.append("param")
        elif node.role and node.role != "attribute":
            extra.append(node.role)
        if t.quantization:
            extra.append(t.quantization["scheme"])
        if t.layout != "strided":
            extra.append(t.layout)
        if node.kind == "ndarray":
            extra.append("numpy")
        return t.dtype + (f" ({', '.join(extra)})" if extra else "")
    if node.kind == "module":
        return short_type(node.type_name)
    if node.kind == "object":
        return node.type_name  # in full: posix.system says more than system
    if node.kind in ("dict", "list", "tuple", "set"):
        return short_type(node.type_name) or node.kind
    return short_type(node.type_name) or node.kind


def row_numel(d: DisplayNode) -> int:
    """A tensor row's own element count (also when other keys extend its key: the row's
    shape and dtype are its tensor's); a group's total."""
    return d.node.tensor.numel if d.is_tensor else d.numel  # type: ignore[union-attr]


def row_nbytes(d: DisplayNode) -> int:
    return d.node.tensor.nbytes if d.is_tensor else d.nbytes  # type: ignore[union-attr]


def tensor_files(d: DisplayNode) -> list[str]:
    """The files that hold a tensor row, relative to what was opened: its own, then those
    of its pieces (a tensor saved in pieces by several ranks); [] for groups."""
    if not d.is_tensor:
        return []
    t = d.node.tensor  # type: ignore[union-attr]
    files = [t.file] if t.file else []
    for piece in t.pieces or ():
        name = piece.get("file")
        if name and name not in files:
            files.append(str(name))
    return files


def file_text(d: DisplayNode, folder: str = "") -> str:
    """The File column: the file that holds a tensor (relative to ``folder``, where all of
    them lie), and "+N" when N more hold pieces of it ("" for a single file, for groups)."""
    files = tensor_files(d)
    first = files[0] if files else ""
    if folder and first.startswith(folder + "/"):
        first = first[len(folder) + 1:]
    return f"{first} +{len(files) - 1}" if len(files) > 1 else first


def shape_text(d: DisplayNode) -> str:
    node = d.node
    if node is None:
        return f"{d.tensors:,} tensor{'s' if d.tensors != 1 else ''}"
    if node.tensor is not None:
        return "[" + ", ".join(str(s) for s in node.tensor.shape) + "]"
    if node.kind in ("scalar", "str", "value", "none", "bytes", "ref") or node.value is not None:
        return format_value(node, 80)
    if node.kind == "cycle":
        return "(refers to an enclosing object)"
    if node.children:
        n = len(node.children)
        return f"{n} item{'s' if n != 1 else ''}"
    return node.note or ""


class NodeTreeModel(QAbstractItemModel):
    """A read-only tree over nodes that know their ``parent``, ``row``, ``children`` and
    ``order`` (their first position, to undo sorting): the structure and the sorting that
    the key tree and the comparison tree share. Subclasses name their :attr:`COLUMNS` (those
    in :attr:`NUMERIC` are aligned right), give a cell's text (``_display``), a row's
    tooltip (``_tooltip``), any other role (``_style``) and one sort key per column in
    :attr:`_SORT_KEYS`. :data:`NodeRole` gives the node of a row."""

    COLUMNS: ClassVar[tuple[str, ...]] = ()
    COLUMN_HELP: ClassVar[dict[int, str]] = {}  # header tooltips
    NUMERIC: ClassVar[tuple[int, ...]] = ()
    _SORT_KEYS: ClassVar[dict[int, Callable[[Any], Any]]] = {}

    def __init__(self, top: Any, parent: Any = None):
        super().__init__(parent)
        self._top = top
        self._sorted_by: tuple[int, Qt.SortOrder] | None = None  # None: the file's order
        self._in_order: set[int] = set()  # ids of the nodes whose children are sorted so
        self._resorted = False  # sorted by a column since built (else in the file's order)
        self._opened: dict[int, Any] = {}  # large rows the view has opened (canFetchMore)

    # -- structure -------------------------------------------------------------------
    def node(self, index: QModelIndex) -> Any:
        return index.internalPointer() if index.isValid() else self._top

    def children_of(self, node: Any) -> list[Any]:
        """A node's children in the order shown: each level is sorted when first asked
        for (sorting 100,000 rows at once would freeze the window), as a new list, so a
        worker walking the tree meanwhile sees every child once."""
        children = node.children
        if not self._resorted:
            return children  # as built: in the file's order
        if len(children) > 1 and id(node) not in self._in_order:
            self._in_order.add(id(node))
            if self._sorted_by is None:
                ordered = sorted(children, key=_order)
            else:
                column, order = self._sorted_by
                ordered = sorted(children, key=self._SORT_KEYS.get(column, _order),
                                 reverse=order == Qt.SortOrder.DescendingOrder)
            if ordered != children:
                for row, child in enumerate(ordered):
                    child.row = row
                node.children = children = ordered
        return children

    def index(self, row: int, column: int, parent: QModelIndex = QModelIndex()) -> QModelIndex:
        children = self.children_of(self.node(parent))
        if 0 <= row < len(children) and 0 <= column < len(self.COLUMNS):
            return self.createIndex(row, column, children[row])
        return QModelIndex()

    def parent(self, index: QModelIndex = QModelIndex()) -> QModelIndex:  # type: ignore[override]
        if not index.isValid():
            return QModelIndex()
        parent = index.internalPointer().parent
        if parent is None or parent is self._top:
            return QModelIndex()
        return self.createIndex(parent.row, 0, parent)

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:
        if parent.isValid() and parent.column() != 0:
            return 0
        return len(self.node(parent).children)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:
        return len(self.COLUMNS)

    def hasChildren(self, parent: QModelIndex = QModelIndex()) -> bool:
        return self.rowCount(parent) > 0

    # A row with more children than this says it "can fetch more" until the view first
    # opens it. All its rows are there (rowCount is true), but a filter proxy answers
    # hasChildren from this instead of mapping the rows, which asks its filterAcceptsRow,
    # a Python call, once per row: 100,000 calls (a quarter of a second, the window frozen)
    # for a closed module of 100,000 layers, then again at every change of the filter.
    LAZY_ROWS = 2000

    def canFetchMore(self, parent: QModelIndex | QPersistentModelIndex) -> bool:
        if not parent.isValid():
            return False
        node = parent.internalPointer()
        return len(node.children) > self.LAZY_ROWS and id(node) not in self._opened

    def fetchMore(self, parent: QModelIndex | QPersistentModelIndex) -> None:
        """The view opens a large row (QTreeView asks when it expands one)."""
        if parent.isValid():
            node = parent.internalPointer()
            self._opened[id(node)] = node

    def flags(self, index: QModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.COLUMN_HELP.get(section)
        if role == Qt.ItemDataRole.TextAlignmentRole and section in self.NUMERIC:
            return _RIGHT
        return None

    # -- data ---------------------------------------------------------------------------
    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        node = index.internalPointer()
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(node, col)
        if role == NodeRole:
            return node
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(node)
        if role == Qt.ItemDataRole.TextAlignmentRole and col in self.NUMERIC:
            return _RIGHT
        return self._style(node, col, role)

    def _display(self, node: Any, col: int) -> str | None:
        return ""

    def _tooltip(self, node: Any) -> str:
        return ""

    def _style(self, node: Any, col: int, role: int) -> Any:
        """Any other role of a cell (colours, fonts, icons)."""
        return None

    # -- sorting (in Python, one level at a time, when the level is first shown) ----------
    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        if column < 0 and self._sorted_by is None:
            return  # already in the file's order
        self._sorted_by = None if column < 0 else (column, order)
        self._resorted = True
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        old_nodes = [(i.internalPointer(), i.column()) for i in old]
        self._in_order.clear()
        for node, _column in old_nodes:  # the rows of these are needed now: their levels
            self._sort_above(node)
        new = [self.createIndex(n.row, c, n) for n, c in old_nodes]
        self.changePersistentIndexList(old, new)
        self.layoutChanged.emit()

    def _sort_above(self, node: Any) -> None:
        """Sort the levels that hold ``node`` and its ancestors (so their rows are right)."""
        parent = node.parent
        while parent is not None and id(parent) not in self._in_order:
            self.children_of(parent)
            parent = parent.parent


class CheckpointModel(NodeTreeModel):
    """A read-only tree over :class:`DisplayNode`; nodes know their parent and row."""

    COLUMNS = COLUMNS
    NUMERIC = (ELEMENTS, SIZE)

    def __init__(self, top: DisplayNode, parent: Any = None):
        super().__init__(top, parent)
        self._target = "cpu"
        self.dangerous: set[str] = set()  # names the scan flagged; their rows are shown red
        self.files_folder = ""  # where all the files lie: the File column leaves it out

    # -- data ---------------------------------------------------------------------------
    def _style(self, d: DisplayNode, col: int, role: int) -> Any:
        if role == Qt.ItemDataRole.ForegroundRole:
            if d.is_tensor and d.node.tensor.problem:
                return brush("danger")
            if d.node is not None and d.node.type_name in self.dangerous:
                return brush("danger")
            if col == SHAPE and not d.is_tensor:
                return brush("muted")
            if col == KEY and d.node is not None and d.node.role == "attribute":
                return brush("muted")
            if col == DEVICE and "→" in (self._display(d, col) or ""):
                return brush("warning")
        if role == Qt.ItemDataRole.FontRole and col == KEY and not d.is_tensor and d.children:
            font = QFont()
            font.setBold(d.node is None or d.node.kind == "module")
            return font
        return None

    def _display(self, d: DisplayNode, col: int) -> str | None:
        if col == KEY:
            return d.label
        if col == TYPE:
            return type_text(d)
        if col == SHAPE:
            return shape_text(d)
        if col == ELEMENTS:
            return f"{row_numel(d):,}" if d.tensors else ""
        if col == SIZE:
            return human_bytes(row_nbytes(d)) if d.tensors else ""
        if col == DEVICE and d.is_tensor:
            return self.device_text(d.node.tensor.device)
        if col == FILE:
            return file_text(d, self.files_folder)
        return ""

    def _tooltip(self, d: DisplayNode) -> str:
        lines = [d.key or "(root)"]
        if d.is_tensor:
            t = d.node.tensor
            lines.append(f"{t.dtype} {list(t.shape)}, stride {list(t.stride or ())}, "
                         f"offset {t.storage_offset}")
            files = tensor_files(d)
            if len(files) > 1:
                lines.append(f"in pieces, in {len(files)} files:")
                lines += [f"  {f}" for f in files[:MAX_TIP_FILES]]
                if len(files) > MAX_TIP_FILES:
                    lines.append(f"  … and {len(files) - MAX_TIP_FILES:,} more")
            elif files:
                lines.append(f"in {files[0]}")
            if t.problem:
                lines.append(f"DAMAGED: {t.problem}")
            if d.children:  # a key that other keys extend: the columns are its tensor's own
                lines.append(f"with the keys under it: {d.tensors:,} tensors, "
                             f"{d.numel:,} elements, {human_bytes(d.nbytes)}")
        elif d.tensors:
            lines.append(f"{d.tensors:,} tensors, {d.numel:,} elements, {human_bytes(d.nbytes)}")
        return "\n".join(lines)

    # -- device column ----------------------------------------------------------------------
    def device_text(self, saved: str) -> str:
        """The Device column of a tensor saved on ``saved``: ``cuda:0 → cpu`` where it would
        be loaded elsewhere."""
        if saved not in (self._target, "numpy", "meta", "unknown") and self._target:
            return f"{saved} → {self._target}"
        return saved

    def set_target_device(self, device: str) -> None:
        if device == self._target:
            return
        self._target = device
        if self._top.children:
            self._emit_column_changed(DEVICE, self._top)

    def _emit_column_changed(self, column: int, top: DisplayNode) -> None:
        for d in top.walk():
            if d.children:
                first = self.createIndex(0, column, d.children[0])
                last = self.createIndex(len(d.children) - 1, column, d.children[-1])
                self.dataChanged.emit(first, last, [Qt.ItemDataRole.DisplayRole])

    _SORT_KEYS: ClassVar[dict[int, Callable[[DisplayNode], Any]]] = {
        KEY: lambda d: natural_key(d.label),
        TYPE: lambda d: type_text(d),
        SHAPE: lambda d: (tuple(d.node.tensor.shape) if d.is_tensor else (),
                          natural_key(shape_text(d))),
        ELEMENTS: lambda d: row_numel(d),
        SIZE: lambda d: row_nbytes(d),
        DEVICE: lambda d: d.node.tensor.device if d.is_tensor else "",
        FILE: lambda d: natural_key(file_text(d)),
    }


class FilterProxy(QSortFilterProxyModel):
    """Filtering by a precomputed set of visible nodes; sorting is the source model's.

    The set already holds the ancestors and descendants of every match (what
    Qt's recursive filtering would show), computed in one Python pass, so the
    proxy asks once per row of the parents it maps instead of walking every
    subtree through Python calls: filtering 100,000 keys stays well under a second.
    """

    def __init__(self, parent: Any = None):
        super().__init__(parent)
        self._matches: set[int] | None = None
        # the children of the parent asked about last: Qt asks about every row of a parent
        # in turn (10,000 times for a module of 10,000 rows); sorting may replace the list
        self._parent_node: Any = None
        self._children: list[Any] = []
        self.sourceModelChanged.connect(self._forget_parent)
        self.layoutAboutToBeChanged.connect(self._forget_parent)

    def _forget_parent(self, *_args: Any) -> None:
        self._parent_node, self._children = None, []

    @property
    def filtering(self) -> bool:
        return self._matches is not None

    def set_matches(self, matches: set[int] | None) -> None:
        """Show only these nodes (ids of display nodes); None shows everything."""
        self._forget_parent()
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9
            self.beginFilterChange()
            self._matches = matches
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:
            self._matches = matches
            self.invalidateRowsFilter()

    def filterAcceptsRow(self, row: int, parent: QModelIndex | QPersistentModelIndex) -> bool:
        if self._matches is None:
            return True
        node = parent.internalPointer() if parent.isValid() else self.sourceModel().node(parent)
        if node is not self._parent_node:
            self._parent_node, self._children = node, self.sourceModel().children_of(node)
        children = self._children
        return 0 <= row < len(children) and id(children[row]) in self._matches

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        source = self.sourceModel()
        if source is not None:
            source.sort(column, order)
