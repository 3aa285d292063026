"""A dock listing checkpoint files under a folder; double-click opens one (or a folder that
is a checkpoint, such as a sharded model)."""

from __future__ import annotations

import os
from typing import Any

from PySide6.QtCore import QDir, QModelIndex, Qt, Signal
from PySide6.QtWidgets import (
    QFileSystemModel,
    QHBoxLayout,
    QLineEdit,
    QToolButton,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.layouts import is_checkpoint_folder
from ckpt_inspector.gui.icons import app_icon
from ckpt_inspector.gui.remote import is_url
from ckpt_inspector.gui.theme import color

CHECKPOINT_PATTERNS = ["*.pt", "*.pth", "*.ckpt", "*.bin", "*.pt2", "*.onnx", "*.safetensors",
                       "*.gguf", "*.pkl", "*.pickle", "*.npy", "*.npz", "*.joblib", "*.tar",
                       "*.gz", "*.bz2", "*.xz", "*.lzma", "*.tgz", "*.index.json"]


class _CheckpointFolders(QFileSystemModel):
    """The file system, with folders that are checkpoints (a sharded model) marked with the
    checkpoint icon; what a folder is, is asked once per folder."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._known: dict[str, bool] = {}

    def is_checkpoint(self, path: str) -> bool:
        if path not in self._known:
            try:
                self._known[path] = is_checkpoint_folder(path)
            except OSError:
                self._known[path] = False
        return self._known[path]

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DecorationRole and index.column() == 0 and self.isDir(index) \
                and self.is_checkpoint(self.filePath(index)):
            return app_icon()  # the checkpoint icon
        if role == Qt.ItemDataRole.ToolTipRole and index.column() == 0 and self.isDir(index) \
                and self.is_checkpoint(self.filePath(index)):
            return "A checkpoint made of several files: double-click opens it"
        return super().data(index, role)


class FileBrowser(QWidget):
    file_activated = Signal(str)
    folder_changed = Signal(str)

    def __init__(self, folder: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = _CheckpointFolders(self)
        self.model.setNameFilters(CHECKPOINT_PATTERNS)
        self.model.setNameFilterDisables(False)  # hide what is not a checkpoint
        self.model.setFilter(QDir.Filter.AllDirs | QDir.Filter.Files | QDir.Filter.NoDotAndDotDot)
        self.model.setRootPath("")
        self.path_edit = QLineEdit()
        self.path_edit.setObjectName("browserPath")
        self.path_edit.setToolTip("Folder to list (or a file to open); edit and press Enter")
        self.path_edit.returnPressed.connect(self._path_entered)
        up = QToolButton()
        up.setText("↑")
        up.setToolTip("Parent folder")
        up.setAutoRaise(True)
        up.clicked.connect(lambda: self.set_folder(os.path.dirname(self.folder.rstrip(os.sep))
                                                   or os.sep))
        self.view = QTreeView()
        self.view.setObjectName("browserTree")
        self.view.setModel(self.model)
        for col in (1, 2, 3):
            self.view.hideColumn(col)
        self.view.setHeaderHidden(True)
        # a double-click on a plain folder expands it (_activated); Qt's own toggle would
        # collapse it again at once
        self.view.setExpandsOnDoubleClick(False)
        # a double-click activates (Enter too, or a single click where the platform says so)
        self.view.activated.connect(self._activated)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path_edit, 1)
        row.addWidget(up)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(row)
        layout.addWidget(self.view, 1)
        self.folder = ""
        self.set_folder(folder)

    def _path_entered(self) -> None:
        text = self.path_edit.text().strip()
        if is_url(text):  # a URL typed here opens like one given to File > Open URL
            self.path_edit.setText(self.folder)
            self.file_activated.emit(text)
            return
        path = os.path.abspath(os.path.expanduser(text))
        if os.path.isfile(path):
            self.set_folder(os.path.dirname(path))
            self.file_activated.emit(path)
        else:
            self.set_folder(path)

    def show_file(self, path: str) -> None:
        """Select ``path`` in the list if it is under the folder shown; else select nothing."""
        if os.path.dirname(path).startswith(self.folder):
            index = self.model.index(path)
            if index.isValid():
                self.view.setCurrentIndex(index)
                self.view.scrollTo(index)
                return
        self.view.clearSelection()
        self.view.setCurrentIndex(QModelIndex())

    def set_folder(self, folder: str) -> None:
        folder = os.path.abspath(os.path.expanduser(folder or os.getcwd()))
        if not os.path.isdir(folder):
            self.path_edit.setStyleSheet(f"color:{color('danger')};")
            return
        self.path_edit.setStyleSheet("")
        self.folder = folder
        self.path_edit.setText(folder)
        self.view.setRootIndex(self.model.index(folder))
        self.folder_changed.emit(folder)

    def _activated(self, index: QModelIndex) -> None:
        path = self.model.filePath(index)
        if os.path.isfile(path) or (os.path.isdir(path) and self.model.is_checkpoint(path)):
            self.file_activated.emit(path)
        elif os.path.isdir(path):
            self.view.setExpanded(index, not self.view.isExpanded(index))
