"""A drop onto the window is taken as a copy, never a move: the application the files come
from must never delete them because the window said it moved them."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from ckpt_inspector.gui.dropping import drop_urls

A = Qt.DropAction
K = Qt.KeyboardModifier


def _events(paths, actions, modifiers):
    mime = QMimeData()
    mime.setUrls(drop_urls([str(p) for p in paths]))
    args = (actions, mime, Qt.MouseButton.LeftButton, modifiers)
    return (QDragEnterEvent(QPoint(50, 50), *args), QDragMoveEvent(QPoint(60, 60), *args),
            QDropEvent(QPointF(60, 60), *args)), mime


@pytest.mark.parametrize("modifiers", [K.NoModifier, K.ShiftModifier])
def test_a_drop_offered_as_copy_or_move_is_taken_as_a_copy(qtbot, window, tensors_file,
                                                           modifiers):
    """A file manager offers copy, move and link; Shift (the window's compare gesture) asks
    for a move there. Whatever is proposed, the window answers copy at each step."""
    (enter, move, drop), _mime = _events([tensors_file[0]], A.CopyAction | A.MoveAction
                                         | A.LinkAction, modifiers)
    for event in (enter, move):
        QApplication.sendEvent(window, event)
        assert event.isAccepted() and event.dropAction() == A.CopyAction, event
    with qtbot.waitSignal(window.file_shown, timeout=60_000):
        QApplication.sendEvent(window, drop)
    assert drop.isAccepted() and drop.dropAction() == A.CopyAction


def test_a_drop_offered_only_as_a_move_is_refused(qtbot, window, tensors_file):
    """Taking it would tell the source to delete the file: the window does not take it."""
    (enter, move, drop), _mime = _events([tensors_file[0]], A.MoveAction, K.NoModifier)
    for event in (enter, move, drop):
        QApplication.sendEvent(window, event)
        assert not event.isAccepted() or event.dropAction() != A.MoveAction, event
    assert window.tabs.count() == 0
