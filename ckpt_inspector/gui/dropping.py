"""What a drag onto the window carries, and how a drop is taken: always as a copy."""

from __future__ import annotations

import os

from PySide6.QtCore import QMimeData, Qt, QUrl
from PySide6.QtGui import QDropEvent

from ckpt_inspector.gui.remote import is_url


def drop_urls(paths: list[str]) -> list[QUrl]:
    return [QUrl(p) if is_url(p) else QUrl.fromLocalFile(os.path.abspath(p)) for p in paths]


def take_as_copy(event: QDropEvent) -> bool:
    """Accept a drag or a drop as a copy (a link where the source offers no copy), never as
    the move it may propose: the source would delete the user's file. False, and the event
    ignored, when the source offers only a move."""
    offered = event.possibleActions()
    for action in (Qt.DropAction.CopyAction, Qt.DropAction.LinkAction):
        if offered & action:
            event.setDropAction(action)
            event.accept()
            return True
    event.ignore()
    return False


def dropped_paths(mime: QMimeData) -> list[str]:
    """What a drop names: local files and folders that exist (a plain folder is browsed),
    URLs that are not local files, and URLs dropped as text (one a line)."""
    paths = []
    for url in mime.urls():
        if url.isLocalFile():
            path = url.toLocalFile()
            if os.path.exists(path):
                paths.append(path)
        elif is_url(url.toString()):
            paths.append(url.toString())
    if not paths and mime.hasText():
        paths = [line.strip() for line in mime.text().splitlines() if is_url(line.strip())]
    return paths
