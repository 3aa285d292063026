"""Start the desktop app."""

from __future__ import annotations

import os
import sys
import time

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from ckpt_inspector import __version__
from ckpt_inspector.gui.icons import app_icon
from ckpt_inspector.gui.main_window import MainWindow
from ckpt_inspector.gui.worker import Worker

DESKTOP_ID = "ckpt-inspector"  # resources/ckpt-inspector.desktop, the Wayland app id


def make_app() -> QApplication:
    """The application, named for QSettings and the desktop (window icon, the .desktop
    entry that groups its windows); the theme is applied by the main window, from its
    settings."""
    QApplication.setDesktopFileName(DESKTOP_ID)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "ckpt-inspector"])
    app.setOrganizationName("ckpt-inspector")
    app.setApplicationName("ckpt-inspector")
    app.setApplicationVersion(__version__)
    app.setWindowIcon(app_icon())
    return app  # type: ignore[return-value]


def run(paths: list[str]) -> int:
    app = make_app()
    window = MainWindow()
    window.show()
    if paths:
        QTimer.singleShot(0, lambda: window.open_paths(paths))
    # hooks for the smoke test and the start-up benchmark
    if os.environ.get("CKPT_INSPECTOR_EXIT_WHEN_SHOWN"):
        def shown(path: str) -> None:
            print(f"shown {time.time():.6f} {path}", flush=True)
            QTimer.singleShot(0, window.close)
        window.file_shown.connect(shown)
    quit_after = os.environ.get("CKPT_INSPECTOR_QUIT_AFTER_MS")
    if quit_after:
        QTimer.singleShot(int(quit_after), window.close)
    code = app.exec()
    # let the workers still running (the plots preload, a cancelled read) end before the
    # interpreter tears their objects down under them
    Worker.await_all(5000)
    return code
