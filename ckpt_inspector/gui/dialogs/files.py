"""Choosing checkpoint files."""

from __future__ import annotations

from PySide6.QtWidgets import QFileDialog, QWidget

FILE_FILTER = ("Checkpoints (*.pt *.pth *.ckpt *.bin *.pt2 *.onnx *.safetensors *.gguf *.pkl "
               "*.npy *.npz *.joblib *.index.json);;Compressed (*.gz *.bz2 *.xz *.lzma *.z "
               "*.tgz);;All files (*)")


def ask_files(parent: QWidget, folder: str, title: str, single: bool = False) -> list[str]:
    """The files the user picks, starting in ``folder`` ([] if they cancel)."""
    dialog = QFileDialog(parent, title, folder, FILE_FILTER)
    dialog.setFileMode(QFileDialog.FileMode.ExistingFile if single
                       else QFileDialog.FileMode.ExistingFiles)
    dialog.setViewMode(QFileDialog.ViewMode.Detail)
    dialog.resize(900, 560)
    if dialog.exec():
        return dialog.selectedFiles()
    return []


def ask_folder(parent: QWidget, folder: str, title: str) -> str:
    """A folder the user picks, starting in ``folder`` ("" if they cancel)."""
    return QFileDialog.getExistingDirectory(parent, title, folder)
