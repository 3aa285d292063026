"""Filtering a large key tree without freezing the window: the query is matched on the GUI
thread a slice of a few milliseconds at a time, between events; and the expanded rows kept
while a filter shows.

Not on a worker: matching is pure Python, so a worker would hold the interpreter lock while
the GUI thread waits for it at every call into Python (painting a row, a timer), which
froze the window for the whole half second it takes over 100,000 keys.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from PySide6.QtCore import QModelIndex, QObject, QTimer, Signal
from PySide6.QtWidgets import QTreeView

from ckpt_inspector.core import query as query_mod
from ckpt_inspector.core.display import DisplayNode
from ckpt_inspector.gui.tree.model import NodeRole

SLICE_S = 0.012  # GUI-thread time per turn of the event loop
STEP = 512  # nodes between looks at the clock

Result = tuple[set[int], int, int]  # visible ids, rows that match, tensors among them


def match_steps(top: DisplayNode, q: query_mod.Query) -> Generator[None, None, Result]:
    """What a filter shows, computed in steps (each ``yield`` is a chance to stop): the
    ids of the rows shown (:func:`~ckpt_inspector.core.query.visible_ids`), how many rows
    match and how many of them are tensors."""
    matches: list[DisplayNode] = []
    for n, node in enumerate(top.walk(), 1):
        if node is not top and q(node):
            matches.append(node)
        if n % STEP == 0:
            yield
    visible: set[int] = set()
    for n, node in enumerate(matches, 1):
        if id(node) not in visible:
            for below in node.walk():
                visible.add(id(below))
            parent = node.parent
            while parent is not None and id(parent) not in visible:
                visible.add(id(parent))
                parent = parent.parent
        if n % STEP == 0:
            yield
    return visible, len(matches), sum(1 for m in matches if m.is_tensor)


def match_now(top: DisplayNode, q: query_mod.Query) -> Result:
    steps = match_steps(top, q)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


class SlicedMatcher(QObject):
    """Runs :func:`match_steps` in slices of :data:`SLICE_S`; ``done(result)`` at the end.
    Starting again drops the run under way."""

    done = Signal(object)

    def __init__(self, parent: Any = None):
        super().__init__(parent)
        self._steps: Generator[None, None, Result] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._run)

    @property
    def running(self) -> bool:
        return self._steps is not None

    def start(self, top: DisplayNode, q: query_mod.Query) -> None:
        self._steps = match_steps(top, q)
        self._timer.start()

    def cancel(self) -> None:
        self._steps = None
        self._timer.stop()

    def _run(self) -> None:
        steps = self._steps
        if steps is None:
            return
        deadline = time.perf_counter() + SLICE_S
        try:
            next(steps)  # a step at least, whatever the clock says
            while time.perf_counter() < deadline:
                next(steps)
        except StopIteration as end:
            self._steps = None
            self.done.emit(end.value)
            return
        self._timer.start()


def expanded_keys(tree: QTreeView) -> set[str]:
    """The keys of the expanded rows (kept while a filter shows, restored after it)."""
    model = tree.model()
    out: set[str] = set()
    stack = [QModelIndex()]
    while stack:
        parent = stack.pop()
        for row in range(model.rowCount(parent)):
            idx = model.index(row, 0, parent)
            if tree.isExpanded(idx):
                out.add(idx.data(NodeRole).key)
                stack.append(idx)
    return out


def restore_expansion(tree: QTreeView, keys: set[str]) -> None:
    """Expand the rows with these keys (and only them), the current row in sight."""
    model = tree.model()
    tree.collapseAll()
    stack = [QModelIndex()]
    while stack:
        parent = stack.pop()
        for row in range(model.rowCount(parent)):
            idx = model.index(row, 0, parent)
            if idx.data(NodeRole).key in keys:
                tree.expand(idx)
                stack.append(idx)
    current = tree.currentIndex()
    if current.isValid():
        tree.scrollTo(current)
