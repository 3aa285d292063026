"""What the window keeps between sessions (QSettings): recent files, the last folder, the
window's size and layout."""

from __future__ import annotations

import os

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMainWindow

MAX_RECENT = 10
RECENT, LAST_FOLDER, GEOMETRY, WINDOW_STATE = "recentFiles", "lastFolder", "geometry", \
    "windowState"


def recent_files(settings: QSettings) -> list[str]:
    value = settings.value(RECENT, [])
    if isinstance(value, str):
        value = [value]
    return [str(p) for p in (value or [])]


def remember(settings: QSettings, path: str) -> None:
    """``path`` first among the recent files; its folder is where dialogs open next."""
    recent = [p for p in recent_files(settings) if p != path]
    recent.insert(0, path)
    settings.setValue(RECENT, recent[:MAX_RECENT])
    settings.setValue(LAST_FOLDER, os.path.dirname(path))


def clear_recent(settings: QSettings) -> None:
    settings.setValue(RECENT, [])


def restore_layout(window: QMainWindow, settings: QSettings) -> None:
    """Window size and place, and where the docks and toolbar are, as last closed."""
    geometry = settings.value(GEOMETRY)
    if geometry is None or not window.restoreGeometry(geometry):
        window.resize(1400, 860)
    state = settings.value(WINDOW_STATE)
    if state is not None:
        window.restoreState(state)


def save_layout(window: QMainWindow, settings: QSettings) -> None:
    settings.setValue(GEOMETRY, window.saveGeometry())
    settings.setValue(WINDOW_STATE, window.saveState())
    settings.sync()
