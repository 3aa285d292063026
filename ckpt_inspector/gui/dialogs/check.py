"""Tools > Check against a model…: which model (a torchvision architecture, your builder,
or another open file) and which part of the checkpoint is its state_dict."""

from __future__ import annotations

import ast
import os

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.ops.check.request import CheckRequest
from ckpt_inspector.core.ops.export.plan import Source
from ckpt_inspector.gui.remote import name_of

ARCH, BUILDER, OTHER = range(3)
DEFAULT_ARCH = "resnet18"
BUILDER_HINT = ("A function of yours that returns the model, called with no arguments: "
                "package.module:function (importable from the folder the app was started in, "
                "or PYTHONPATH) or path/to/file.py:function. It runs in a separate process, "
                "on the meta device: nothing is allocated.")
_PREFERRED = ("build", "make", "create", "get", "model", "net")


def builder_functions(path: str) -> list[str]:
    """The top-level functions a Python file defines, read with ``ast`` (nothing runs);
    those named like builders first."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)
             and not n.name.startswith("_")]
    return sorted(names, key=lambda n: not n.lower().startswith(_PREFERRED))


class CheckDialog(QDialog):
    """:meth:`request` once accepted. ``others``: the paths of the other open tabs;
    ``parts``: the parts of the checkpoint that hold tensors (best guess first)."""

    def __init__(self, path: str, parts: list[Source], others: list[str], arch: str = "",
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.path = path
        self.setWindowTitle("Check against a model")
        self.setObjectName("checkDialog")
        intro = QLabel(f"Will <b>{name_of(path)}</b> load into a model with "
                       "<code>load_state_dict(sd, strict=True)</code>? The model is built "
                       "without weights (nothing is downloaded) and nothing in the checkpoint "
                       "runs.")
        intro.setWordWrap(True)

        self.kinds = QButtonGroup(self)
        arch_radio = QRadioButton("&torchvision architecture")
        builder_radio = QRadioButton("&your builder")
        other_radio = QRadioButton("another &open file")
        for i, radio in enumerate((arch_radio, builder_radio, other_radio)):
            self.kinds.addButton(radio, i)
        self.arch_box = QComboBox()
        self.arch_box.setObjectName("checkArch")
        self.arch_box.setEditable(True)
        self.arch_box.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.arch_box.setMinimumContentsLength(24)
        self.arch_box.setEditText(arch or DEFAULT_ARCH)
        self.arch_box.setToolTip("Listing torchvision's architectures…")
        self.builder_edit = QLineEdit()
        self.builder_edit.setObjectName("checkBuilder")
        self.builder_edit.setPlaceholderText("package.module:function or file.py:function")
        self.builder_edit.setToolTip(BUILDER_HINT)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        builder_row = QHBoxLayout()
        builder_row.addWidget(self.builder_edit, 1)
        builder_row.addWidget(browse)
        self.other_box = QComboBox()
        self.other_box.setObjectName("checkOther")
        for other in others:
            self.other_box.addItem(name_of(other), other)
            self.other_box.setItemData(self.other_box.count() - 1, other,
                                       Qt.ItemDataRole.ToolTipRole)
        other_radio.setEnabled(bool(others))
        self.other_box.setEnabled(bool(others))

        self.part_box = QComboBox()
        self.part_box.setObjectName("checkPart")
        for part in parts:
            self.part_box.addItem(part.label, part.key)
        if not parts:
            self.part_box.addItem("(best guess)", None)

        grid = QGridLayout()
        grid.addWidget(arch_radio, 0, 0)
        grid.addWidget(self.arch_box, 0, 1)
        grid.addWidget(builder_radio, 1, 0)
        grid.addLayout(builder_row, 1, 1)
        grid.addWidget(other_radio, 2, 0)
        grid.addWidget(self.other_box, 2, 1)
        grid.addWidget(QLabel("state_dict in the &file:"), 3, 0)
        grid.addWidget(self.part_box, 3, 1)
        grid.setColumnStretch(1, 1)
        grid.itemAtPosition(3, 0).widget().setBuddy(self.part_box)

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Check")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(grid)
        layout.addStretch(1)
        layout.addWidget(self.buttons)
        self.setMinimumWidth(560)

        self.arch_box.editTextChanged.connect(lambda _t: self._pick(ARCH))
        self.builder_edit.textEdited.connect(lambda _t: self._pick(BUILDER))
        self.other_box.activated.connect(lambda _i: self._pick(OTHER))
        self.kinds.idToggled.connect(lambda _i, _on: self._changed())
        self.builder_edit.textChanged.connect(lambda _t: self._changed())
        arch_radio.setChecked(True)

    def set_arch_names(self, names: list[str]) -> None:
        """torchvision's architectures, once the child process has listed them."""
        text = self.arch_box.currentText()
        self.arch_box.blockSignals(True)
        self.arch_box.clear()
        self.arch_box.addItems(names)
        self.arch_box.setEditText(text)
        self.arch_box.blockSignals(False)
        self.arch_box.setToolTip(f"{len(names)} torchvision architectures; type to pick one")

    def arch_list_failed(self, message: str) -> None:
        self.arch_box.setToolTip(f"torchvision's list is unavailable ({message}); type a "
                                 "name")

    def _pick(self, kind: int) -> None:
        self.kinds.button(kind).setChecked(True)

    def _changed(self) -> None:
        kind = self.kinds.checkedId()
        ok = (kind == ARCH and bool(self.arch_box.currentText().strip())) or (
            kind == BUILDER and ":" in self.builder_edit.text()) or (
            kind == OTHER and self.other_box.count() > 0)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(ok)

    def _browse(self) -> None:
        start = os.path.dirname(self.path) if os.path.isfile(self.path) else os.getcwd()
        path, _ = QFileDialog.getOpenFileName(self, "Your model's builder", start,
                                              "Python files (*.py)")
        if path:
            functions = builder_functions(path)
            self.builder_edit.setText(f"{path}:{functions[0] if functions else ''}")
            self._pick(BUILDER)

    def request(self) -> CheckRequest:
        kind = self.kinds.checkedId()
        key = self.part_box.currentData()
        if kind == ARCH:
            return CheckRequest(self.path, arch=self.arch_box.currentText().strip(), key=key)
        if kind == BUILDER:
            return CheckRequest(self.path, builder=self.builder_edit.text().strip(), key=key)
        return CheckRequest(self.path, against=self.other_box.currentData(), key=key)
