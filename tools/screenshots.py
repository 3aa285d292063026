"""Screenshots of the real window for the README and for looking at changes.

    DISPLAY=:99 .venv/bin/python tools/screenshots.py OUT_DIR FILE [FILE...]

Opens each file in the app (a real window, on the X display given), expands the
first module groups, selects a tensor, and saves ``window.grab()`` per file,
plus one of the empty window.
"""

from __future__ import annotations

import os
import sys
import tempfile

from PySide6.QtCore import QModelIndex, QSettings, QTimer
from PySide6.QtWidgets import QApplication

from ckpt_inspector.gui.main_window import MainWindow
from ckpt_inspector.gui.tree_model import NodeRole


def main() -> None:
    out, files = sys.argv[1], sys.argv[2:]
    size = (1500, 900)
    if files and "x" in files[0] and files[0].replace("x", "").isdigit():
        w, h = files.pop(0).split("x")  # an optional WIDTHxHEIGHT first
        size = (int(w), int(h))
    os.makedirs(out, exist_ok=True)
    app = QApplication([])
    settings = QSettings(os.path.join(tempfile.mkdtemp(), "s.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win.resize(*size)
    win.show()
    pending = list(files)

    def snap(name: str) -> None:
        app.processEvents()
        win.grab().save(os.path.join(out, name))
        print("saved", os.path.join(out, name))

    def expand(view) -> None:
        tree, proxy = view.tree, view.proxy
        stack = [QModelIndex()]
        opened = 0
        while stack and opened < 6:
            parent = stack.pop(0)
            for row in range(proxy.rowCount(parent)):
                idx = proxy.index(row, 0, parent)
                d = idx.data(NodeRole)
                if proxy.rowCount(idx) and d.kind in ("group", "module", "dict") and opened < 6:
                    tree.expand(idx)
                    opened += 1
                    stack.append(idx)
        # select a visible tensor, a conv weight if there is one, to show its details
        selected = None
        stack = [QModelIndex()]
        while stack:
            parent = stack.pop()
            for row in range(proxy.rowCount(parent)):
                idx = proxy.index(row, 0, parent)
                d = idx.data(NodeRole)
                if tree.isExpanded(idx):
                    stack.append(idx)
                elif d.is_tensor and (selected is None or d.key.endswith("conv1.weight")):
                    selected = idx
        if selected is not None:
            tree.setCurrentIndex(selected)

    def next_file() -> None:
        if not pending:
            QTimer.singleShot(300, app.quit)
            return
        path = pending.pop(0)
        win.open_paths([path])

    def shown(path: str) -> None:
        expand(win.current_view())
        QTimer.singleShot(400, lambda: (snap(os.path.basename(path) + ".png"), next_file()))

    win.file_shown.connect(shown)
    QTimer.singleShot(1500, lambda: (snap("empty.png"), next_file()))
    app.exec()


if __name__ == "__main__":
    main()
