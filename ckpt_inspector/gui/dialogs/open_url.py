"""File > Open URL…: a URL typed or picked among the recent ones."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.gui.remote import is_url

HINT = ("https://, http://, s3://bucket/key, gs://bucket/key, hf://owner/repo/file, or a "
        "whole model: hf://owner/repo, or a sharded model's index "
        "(…/model.safetensors.index.json). "
        "Only the structure is read (a few requests); tensor data is fetched when you look "
        "at it. Credentials come from each storage library's own configuration and are "
        "never kept.")


class OpenUrlDialog(QDialog):
    """An editable combo box of recent URLs (most recent first); :meth:`url` once accepted."""

    def __init__(self, recent: list[str], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Open URL")
        self.setObjectName("openUrlDialog")
        self.box = QComboBox()
        self.box.setObjectName("urlBox")
        self.box.setEditable(True)
        self.box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.box.setMinimumContentsLength(48)
        self.box.addItems(recent)
        self.box.setCurrentIndex(0 if recent else -1)
        self.box.lineEdit().setPlaceholderText("https://example.org/model.safetensors")
        self.box.lineEdit().selectAll()
        self.box.editTextChanged.connect(self._changed)
        label = QLabel("&URL of a checkpoint:")
        label.setBuddy(self.box)
        hint = QLabel(HINT)
        hint.setObjectName("urlHint")
        hint.setWordWrap(True)
        hint.setEnabled(False)  # drawn in the muted text colour
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(label)
        layout.addWidget(self.box)
        layout.addWidget(hint)
        layout.addStretch(1)
        layout.addWidget(self.buttons)
        self.setMinimumWidth(560)
        self._changed(self.box.currentText())
        self.box.setFocus(Qt.FocusReason.OtherFocusReason)

    def url(self) -> str:
        return self.box.currentText().strip()

    def set_url(self, url: str) -> None:
        self.box.setEditText(url)

    def _changed(self, text: str) -> None:
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Open)
        ok.setEnabled(is_url(text.strip()))
