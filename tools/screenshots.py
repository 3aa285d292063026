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


def _arguments(args: list[str]) -> tuple[str, tuple[int, int], list[str]]:
    """OUT_DIR, the window size and the file specs; ``--theme`` goes to the environment."""
    if args[:1] == ["--theme"]:
        os.environ[theme.ENV] = args[1]  # read by the main window
        args = args[2:]
    out, files = args[0], args[1:]
    size = (1500, 900)
    if files and "x" in files[0] and files[0].replace("x", "").isdigit():
        w, h = files.pop(0).split("x")  # an optional WIDTHxHEIGHT first
        size = (int(w), int(h))
    return out, size, files


def _children(proxy, parent: QModelIndex):
    for row in range(proxy.rowCount(parent)):
        yield proxy.index(row, 0, parent)


def expand(view) -> None:
    """Open the first module groups, then select a visible tensor (a conv weight if there is
    one) to show its details."""
    tree, proxy = view.tree, view.proxy
    queue = [QModelIndex()]
    opened = 0
    while queue and opened < 6:
        for idx in _children(proxy, queue.pop(0)):
            if proxy.rowCount(idx) and idx.data(NodeRole).kind in ("group", "module", "dict") \
                    and opened < 6:
                tree.expand(idx)
                opened += 1
                queue.append(idx)
    selected = None
    stack = [QModelIndex()]
    while stack:
        for idx in _children(proxy, stack.pop()):
            d = idx.data(NodeRole)
            if tree.isExpanded(idx):
                stack.append(idx)
            elif d.is_tensor and (selected is None or d.key.endswith("conv1.weight")):
                selected = idx
    if selected is not None:
        tree.setCurrentIndex(selected)


class Shooter:
    """Opens each file in turn, shows what its spec asks for and saves the window."""

    def __init__(self, app: QApplication, win: MainWindow, out: str, files: list[str]):
        self.app, self.win, self.out = app, win, out
        self.pending = list(files)
        self.current: list[str] = []

    def snap(self, name: str, widget=None) -> None:
        self.app.processEvents()
        (widget or self.win).grab().save(os.path.join(self.out, name))
        print("saved", os.path.join(self.out, name))

    def dialogs(self) -> None:
        for name, dialog in (("about.png", self.win.about()),
                             ("shortcuts.png", self.win.show_shortcuts())):
            self.snap(name, dialog)
            dialog.close()
        QTimer.singleShot(300, self.app.quit)

    def next_file(self) -> None:
        if not self.pending:
            QTimer.singleShot(300, self.dialogs)
            return
        spec = self.pending.pop(0)
        self.current[:] = [*spec.split("#"), "", ""][:3]
        path = self.current[0]
        view = self.win._view_for(os.path.abspath(path))
        if view is not None:
            self.win.tabs.setCurrentWidget(view)
            self.shown(path)
        else:
            views = self.win.open_paths([path])
            if not views:  # a folder browsed in the Files dock: no tab
                self.failed(path)
            for v in views:
                v.failed.connect(lambda _m, p=path: self.failed(p))

    def failed(self, path: str) -> None:
        """A file that did not open (or a folder that is browsed): the window as it is."""
        name = os.path.basename(path.rstrip(os.sep)) + "-failed.png"
        QTimer.singleShot(600, lambda: (self.snap(name), self.next_file()))

    def shown(self, path: str) -> None:
        view = self.win.current_view()
        expand(view)
        _path, key, tab = self.current
        if key:
            view.select_key(key)
        if tab:
            tabs = view.tensor_view.tabs
            names = [tabs.tabText(i).lower() for i in range(tabs.count())]
            if tab in names:
                tabs.setCurrentIndex(names.index(tab))
        name = "-".join(p for p in (os.path.basename(path), key, tab) if p) + ".png"
        QTimer.singleShot(1500 if key else 400, lambda: (self.snap(name), self.next_file()))


def main() -> None:
    out, size, files = _arguments(sys.argv[1:])
    os.makedirs(out, exist_ok=True)
    app = QApplication([])
    settings = QSettings(os.path.join(tempfile.mkdtemp(), "s.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings)
    win.resize(*size)
    win.show()
    shooter = Shooter(app, win, out, files)
    win.file_shown.connect(shooter.shown)
    QTimer.singleShot(1500, lambda: (shooter.snap("empty.png"), shooter.next_file()))
    app.exec()


if __name__ == "__main__":
    main()
