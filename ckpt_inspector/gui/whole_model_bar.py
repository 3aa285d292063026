"""The bar over a tab that shows one part of a checkpoint made of several files:
"model-00002-of-00005.safetensors is shard 2 of 5 of a sharded model  [Open the whole model]".

What the file is part of is the core's answer (:func:`~ckpt_inspector.core.layouts.siblings.
whole_model_for`), looked up on a worker when the tab opens (it lists the file's folder).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from html import escape

from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.layouts.siblings import WholeModel, whole_model_for
from ckpt_inspector.gui.jobs import JobRunner
from ckpt_inspector.gui.remote import is_url
from ckpt_inspector.gui.theme import color, is_palette_change


class WholeModelBar(QFrame):
    """Says which whole a file belongs to; ``open_requested(path)`` opens it."""

    open_requested = Signal(str)

    def __init__(self, file: str, whole: WholeModel, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("wholeModelBar")
        self.whole = whole
        self.label = QLabel()
        self.label.setObjectName("wholeModelText")
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        folder = os.path.basename(whole.folder) or whole.folder
        what = "checkpoint" if "checkpoint" in whole.kind else "model"
        self.label.setText(f"<b>{escape(os.path.basename(file))}</b> is "
                           f"{escape(whole.describe())} in the folder {escape(folder)}: "
                           "this tab shows that file alone.")
        self.button = QPushButton(f"Open the whole {what}")
        self.button.setObjectName("openWholeModel")
        self.button.setToolTip(f"Open {whole.path}")
        self.button.clicked.connect(lambda: self.open_requested.emit(whole.path))
        close = QToolButton()
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Hide this bar")
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.button)
        layout.addWidget(close)
        self._style()

    def _style(self) -> None:
        sheet = (f"QFrame#wholeModelBar {{ background:{color('panel_bg')}; "
                 f"border:1px solid {color('accent')}; border-radius:4px; }}")
        if sheet != self.styleSheet():  # a new sheet repolishes: only on a real change
            self.setStyleSheet(sheet)

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if is_palette_change(event):
            self._style()


def offer_whole_model(runner: JobRunner, view: QWidget, path: str,
                      tabs: Callable[[], list[QWidget]],
                      open_paths: Callable[[list[str]], object]) -> None:
    """Look (on a worker) for the checkpoint ``path`` is one part of; if there is one and
    the tab ``view`` is still among ``tabs()``, put the bar over its content (its button
    calls ``open_paths([whole])``)."""
    if is_url(path) or not os.path.isfile(path):  # a URL's siblings are not listed
        return

    def found(whole: WholeModel | None) -> None:
        layout = view.layout() if whole is not None and view in tabs() else None
        if isinstance(layout, QVBoxLayout) and view.findChild(WholeModelBar) is None:
            bar = WholeModelBar(path, whole, view)
            bar.open_requested.connect(lambda p: open_paths([p]))
            layout.insertWidget(0, bar)
            bar.show()  # now, not on the layout's queued call

    runner.run(f"Looking beside {os.path.basename(path)}", whole_model_for, path,
               on_result=found, quiet=True)
