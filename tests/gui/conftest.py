"""GUI fixtures: an isolated QSettings file, a main window, and a check for leftover threads."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QSettings, QStandardPaths, QThreadPool

from ckpt_inspector.gui.main_window import MainWindow
from ckpt_inspector.gui.worker import Worker

QStandardPaths.setTestModeEnabled(True)  # file dialogs' state and QSettings() in ~/.qttest


@pytest.fixture()
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture()
def window(qtbot, settings):
    win = MainWindow(settings=settings, probe_devices=False)
    qtbot.addWidget(win)
    win.show()
    yield win
    # close the tabs as a user would: nothing of this test (a debounce timer, a slice of
    # filtering) may then run during the next one
    while win.tabs.count():
        win.close_tab(win.tabs.count() - 1)
    win.close()


@pytest.fixture(autouse=True)
def no_dangling_threads(qtbot):
    yield
    Worker.await_all(10_000)
    qtbot.waitUntil(lambda: not Worker.running, timeout=10_000)
    assert QThreadPool.globalInstance().waitForDone(10_000), "worker threads still running"
