"""Asking before loading a file with torch: the questions the core's consent rules call
for (:func:`ckpt_inspector.core.ops.torch_load.consent`), each a warning whose safe answer
is the default."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtWidgets import QMessageBox, QWidget

from ckpt_inspector.core.ops.torch_load import consent
from ckpt_inspector.core.scan import ScanReport
from ckpt_inspector.core.tree import Checkpoint


def confirm(parent: QWidget | None, title: str, text: str, accept: str) -> bool:
    """Ask; the safe answer (Cancel) is the default."""
    box = QMessageBox(QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Cancel,
                      parent)
    yes = box.addButton(accept, QMessageBox.ButtonRole.AcceptRole)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is yes


def ask_consent(ask: Callable[[str, str, str], bool], report: ScanReport, ckpt: Checkpoint,
                name: str) -> list[str] | None:
    """Put each question to the user with ``ask(title, text, accept)``; the ``load`` flags
    they agreed to, or None as soon as they decline one."""
    needed = consent(report, ckpt, name)
    for q in needed.questions:
        if not ask(q.title, q.text, q.accept):
            return None
    return list(needed.flags)
