"""One place that shows errors: a dialog with the message and a "details" section."""

from __future__ import annotations

import traceback
from typing import Any

from PySide6.QtWidgets import QMessageBox, QWidget

from ckpt_inspector.core.errors import CheckpointError


def describe(err: BaseException) -> tuple[str, str]:
    """(message for people, details for a bug report)."""
    details = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    if isinstance(err, CheckpointError):
        return str(err), details
    return f"{type(err).__name__}: {err}", details


class ErrorReporter:
    def __init__(self, parent: QWidget):
        self.parent = parent
        self.last: QMessageBox | None = None

    def show(self, title: str, message: str, details: str = "",
             icon: QMessageBox.Icon = QMessageBox.Icon.Critical) -> QMessageBox:
        box = QMessageBox(icon, title, message, QMessageBox.StandardButton.Ok, self.parent)
        if details:
            box.setDetailedText(details)
        box.setObjectName("errorDialog")
        box.open()  # window-modal, does not block the event loop
        self.last = box
        return box

    def report(self, title: str, err: BaseException, context: str = "") -> Any:
        message, details = describe(err)
        if context:
            message = f"{context}\n\n{message}"
        return self.show(title, message, details)
