"""What the window keeps between sessions (QSettings): recent files, the last folder, the
window's size and layout."""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QMainWindow

from ckpt_inspector.gui.remote import strip_credentials

MAX_RECENT = 10
RECENT, LAST_FOLDER, GEOMETRY, WINDOW_STATE = "recentFiles", "lastFolder", "geometry", \
    "windowState"
RECENT_URLS, LAST_EXPORT_FOLDER = "recentUrls", "lastExportFolder"


def recent_files(settings: QSettings) -> list[str]:
    return _strings(settings, RECENT)


def _strings(settings: QSettings, key: str) -> list[str]:
    value = settings.value(key, [])
    if isinstance(value, str):
        value = [value]
    return [str(p) for p in (value or [])]


def recent_urls(settings: QSettings) -> list[str]:
    """The URLs opened last, most recent first (never with credentials)."""
    return [strip_credentials(u) for u in _strings(settings, RECENT_URLS)]


def remember_url(settings: QSettings, url: str) -> None:
    """``url``, less any ``user:password@``, first among the recent URLs."""
    url = strip_credentials(url)
    recent = [u for u in recent_urls(settings) if u != url]
    settings.setValue(RECENT_URLS, [url, *recent][:MAX_RECENT])


def remember(settings: QSettings, path: str) -> None:
    """``path`` first among the recent files; its folder is where dialogs open next."""
    recent = [p for p in recent_files(settings) if p != path]
    recent.insert(0, path)
    settings.setValue(RECENT, recent[:MAX_RECENT])
    settings.setValue(LAST_FOLDER, os.path.dirname(path))


def clear_recent(settings: QSettings) -> None:
    settings.setValue(RECENT, [])
    settings.setValue(RECENT_URLS, [])


def export_folder(settings: QSettings) -> str:
    """Where an export of a remote checkpoint goes by default: the folder the last export
    went to, else the user's home."""
    folder = str(settings.value(LAST_EXPORT_FOLDER, "") or "")
    return folder if folder and os.path.isdir(folder) else os.path.expanduser("~")


def restore_layout(window: QMainWindow, settings: QSettings) -> None:
    """Window size and place, and where the docks and toolbar are, as last closed."""
    geometry = settings.value(GEOMETRY)
    if geometry is None or not window.restoreGeometry(geometry):
        window.resize(1400, 860)
    fit_to_screen(window)
    state = settings.value(WINDOW_STATE)
    if state is not None:
        window.restoreState(state)


def fit_to_screen(window: QMainWindow) -> None:
    """Keep the window inside the screen's available area (a size saved on a bigger screen,
    or the first size on a small one), moved into it if it lies partly outside."""
    screen = window.screen() or QGuiApplication.primaryScreen()
    if screen is None:
        return
    area = screen.availableGeometry()
    frame = window.frameGeometry().size() - window.geometry().size()  # title bar, borders
    width = min(window.width(), area.width() - max(frame.width(), 0))
    height = min(window.height(), area.height() - max(frame.height(), 0))
    if (width, height) != (window.width(), window.height()):
        window.resize(width, height)
    if not window.isMaximized() and not area.contains(window.frameGeometry()):
        x = min(max(window.x(), area.left()), area.right() - window.frameGeometry().width() + 1)
        y = min(max(window.y(), area.top()), area.bottom() - window.frameGeometry().height() + 1)
        window.move(x, y)


def save_layout(window: QMainWindow, settings: QSettings) -> None:
    settings.setValue(GEOMETRY, window.saveGeometry())
    settings.setValue(WINDOW_STATE, window.saveState())
    settings.sync()
