"""One place that shows errors: a dialog with the message and a "details" section."""

from __future__ import annotations

import traceback
from typing import Any

from PySide6.QtWidgets import QMessageBox, QWidget

from ckpt_inspector.core.errors import CheckpointError


def describe(err: BaseException) -> tuple[str, str]:
    """(message for people, details: what was read for a file problem, the traceback for
    a bug)."""
    if isinstance(err, CheckpointError):
        details = [f"Problem: {err}"]
        partial = err.partial
        if partial is not None:
            details.append(f"Format: {partial.format}")
            if partial.pickles:
                details.append(f"Pickle streams read before the problem: {len(partial.pickles)}")
                names = partial.global_names()
                if names:
                    details.append("Imports seen: " + ", ".join(names[:20]))
        return str(err), "\n".join(details)
    stderr = getattr(err, "stderr", None)
    if isinstance(stderr, str):  # a command the window ran (gui.commands.CommandFailed)
        # what to install on a line of its own (a label wraps it at its hyphen otherwise)
        return str(err).replace(": pip install ", ":\npip install "), stderr.strip()
    details = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return f"{type(err).__name__}: {err}", details


class ErrorReporter:
    def __init__(self, parent: QWidget):
        self.parent = parent
        self.last: QMessageBox | None = None

    def show(self, title: str, message: str, details: str = "",
             icon: QMessageBox.Icon = QMessageBox.Icon.Critical) -> QMessageBox:
        last = self.last
        if last is not None and last.isVisible() and last.windowTitle() == title:
            # several files failed at once: one dialog lists them all
            last.setText(f"{last.text()}\n\n{message}")
            if details:
                previous = last.detailedText()
                last.setDetailedText(f"{previous}\n\n{details}" if previous else details)
            return last
        box = QMessageBox(icon, title, message, QMessageBox.StandardButton.Ok, self.parent)
        if details:
            box.setDetailedText(details)
        box.setObjectName("errorDialog")
        box.setMinimumWidth(420)
        box.open()  # window-modal, does not block the event loop
        self.last = box
        return box

    def report(self, title: str, err: BaseException, context: str = "") -> Any:
        message, details = describe(err)
        if context:
            message = f"{context}\n\n{message}"
        return self.show(title, message, details)
