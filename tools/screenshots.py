"""Screenshots of the real window for the README and for looking at changes.

    DISPLAY=:99 .venv/bin/python tools/screenshots.py [--theme dark] OUT_DIR [WxH] \
        FILE[#KEY[#TAB]] ...

Opens each file in the app (a real window, on the X display given), expands the
first module groups, selects a tensor (KEY if given, else a conv weight), shows
the tensor tab TAB (histogram, heatmap, values) and saves ``window.grab()`` per
item, plus one of the empty window and, at the end, of the About and Keyboard
shortcuts dialogs. ``--theme light|dark`` picks the theme (default: the system's).
"""

from __future__ import annotations

import os
import sys
import tempfile

from PySide6.QtCore import QModelIndex, QSettings, QTimer
from PySide6.QtWidgets import QApplication

from ckpt_inspector.gui import theme
from ckpt_inspector.gui.main_window import MainWindow
from ckpt_inspector.gui.tree.model import NodeRole


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--theme"]:
        os.environ[theme.ENV] = args[1]  # read by the main window
        args = args[2:]
    out, files = args[0], args[1:]
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

    current: list[str] = []

    def dialogs() -> None:
        for name, dialog in (("about.png", win.about()), ("shortcuts.png", win.show_shortcuts())):
            app.processEvents()
            dialog.grab().save(os.path.join(out, name))
            print("saved", os.path.join(out, name))
            dialog.close()
        QTimer.singleShot(300, app.quit)

    def next_file() -> None:
        if not pending:
            QTimer.singleShot(300, dialogs)
            return
        spec = pending.pop(0)
        current[:] = [*spec.split("#"), "", ""][:3]
        path = current[0]
        view = win._view_for(os.path.abspath(path))
        if view is not None:
            win.tabs.setCurrentWidget(view)
            shown(path)
        else:
            win.open_paths([path])

    def shown(path: str) -> None:
        view = win.current_view()
        expand(view)
        _path, key, tab = current
        if key:
            view.select_key(key)
        if tab:
            tabs = view.tensor_view.tabs
            names = [tabs.tabText(i).lower() for i in range(tabs.count())]
            if tab in names:
                tabs.setCurrentIndex(names.index(tab))
        name = "-".join(p for p in (os.path.basename(path), key, tab) if p) + ".png"
        QTimer.singleShot(1500 if key else 400, lambda: (snap(name), next_file()))

    win.file_shown.connect(shown)
    QTimer.singleShot(1500, lambda: (snap("empty.png"), next_file()))
    app.exec()


if __name__ == "__main__":
    main()
