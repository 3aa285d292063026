"""The export dialog's model options: where the model comes from (the file's own, a
torchvision architecture, your builder), the example input and the exporter's options."""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

from PySide6.QtCore import QProcess, Qt, Signal
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from ckpt_inspector.core.ops.export.request import ExportRequest, parse_shape
from ckpt_inspector.core.ops.session import LoadedFile
from ckpt_inspector.gui.commands import cli_command
from ckpt_inspector.gui.theme import span


class ModelOptions(QGroupBox):
    """``detect_requested`` when Detect is pressed (the page knows the key and the
    prefixes); ``kind_changed`` when another model source is chosen."""

    detect_requested = Signal()
    kind_changed = Signal()

    def __init__(self, file: LoadedFile, parent: QWidget | None = None):
        super().__init__("Model", parent)
        self.file = file
        model = QFormLayout()
        self.model_form = model
        model.addRow("Model", self._model_choice())
        model.addRow("Architecture", self._arch_row())
        model.addRow("", self.arch_label)
        self.builder_edit = QLineEdit()
        self.builder_edit.setPlaceholderText("mypackage.models:build_model")
        model.addRow("Builder", self.builder_edit)
        self.trust_box = QCheckBox()
        self.trust_box.setObjectName("trustBox")
        self.run_code_box = QCheckBox("Let the file run its own code (weights_only=False)")
        # what trusting it imports, wrapped below the box (a check box's text is one line,
        # cut off at the dialog's edge: the user must read all of what they consent to)
        self.trust_imports = QLabel()
        self.trust_imports.setObjectName("trustImports")
        self.trust_imports.setWordWrap(True)
        self._set_trust_text()
        model.addRow("", self.trust_box)
        model.addRow("", self.trust_imports)
        model.addRow("", self.run_code_box)
        self._exporter_rows(model)
        self.setLayout(model)
        self._update_enabled()

    @property
    def kind(self) -> str:
        """``own``, ``torchvision`` or ``callable``."""
        return self.model_box.currentData()

    def _model_choice(self) -> QComboBox:
        self.model_box = QComboBox()
        self.model_box.setObjectName("modelBox")
        # its longest choice is not what sets the dialog's width (a tooltip holds each)
        self.model_box.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_box.setMinimumContentsLength(24)
        holds_model = self.file.ckpt.format == "torchscript" or any(
            n.kind == "module" for n in self.file.ckpt.root.walk())
        dangerous = self.file.report.verdict == "dangerous"
        if holds_model:
            self.model_box.addItem("the file's own model (torch loads it)", "own")
            if dangerous:
                self.model_box.model().item(0).setEnabled(False)
                self.model_box.setItemData(0, "Dangerous file: its model is not loaded",
                                           Qt.ItemDataRole.ToolTipRole)
        self.model_box.addItem("a torchvision architecture + the weights in this file",
                               "torchvision")
        self.model_box.addItem("my builder (module:function) + the weights in this file",
                               "callable")
        if holds_model and dangerous:
            self.model_box.setCurrentIndex(1)
        self.model_box.currentIndexChanged.connect(self._kind_changed)
        return self.model_box

    def _arch_row(self) -> QHBoxLayout:
        self.arch_box = QComboBox()
        self.arch_box.setObjectName("archBox")
        self.arch_box.setEditable(True)
        self.arch_box.addItem("auto", "auto")
        self.detect_button = QPushButton("Detect")
        self.detect_button.setToolTip("Compare the keys and shapes with every torchvision "
                                      "model (no weights are downloaded)")
        self.detect_button.clicked.connect(self.detect_requested)
        self.arch_label = QLabel()
        self.arch_label.setObjectName("archLabel")
        arch_row = QHBoxLayout()
        arch_row.addWidget(self.arch_box, 1)
        arch_row.addWidget(self.detect_button)
        return arch_row

    def _exporter_rows(self, model: QFormLayout) -> None:
        """The example input, TorchScript's and ONNX's options, the tolerance."""
        self.shape_edit = QLineEdit("1,3,224,224")
        self.shape_edit.setObjectName("shapeEdit")
        self.input_dtype = QComboBox()
        for d in ("float32", "float16", "bfloat16", "int64"):
            self.input_dtype.addItem(d)
        self.method_box = QComboBox()
        self.method_box.addItems(["trace", "script"])
        self.exporter_box = QComboBox()
        self.exporter_box.addItems(["dynamo", "legacy"])
        self.exporter_box.setToolTip("dynamo is torch's current exporter (needs onnxscript); "
                                     "legacy is the TorchScript-based one")
        self.opset_spin = QSpinBox()
        self.opset_spin.setRange(0, 30)
        self.opset_spin.setSpecialValueText("default")
        self.dynamic_box = QCheckBox("Dynamic batch dimension")
        self.input_names = QLineEdit("input")
        self.output_names = QLineEdit("output")
        self.tolerance = _Tolerance()
        self.tolerance.setDecimals(7)
        self.tolerance.setRange(0, 1)
        self.tolerance.setSingleStep(1e-4)
        self.tolerance.setValue(1e-4)
        model.addRow("Example input shape", self.shape_edit)
        model.addRow("Example input dtype", self.input_dtype)
        model.addRow("TorchScript", self.method_box)
        model.addRow("ONNX exporter", self.exporter_box)
        model.addRow("ONNX opset", self.opset_spin)
        model.addRow("", self.dynamic_box)
        model.addRow("Input / output names", _pair(self.input_names, self.output_names))
        model.addRow("Tolerance (max abs difference)", self.tolerance)

    def _set_trust_text(self) -> None:
        names = self.file.report.flagged_names()
        listed = ", ".join(names[:3]) + (" …" if len(names) > 3 else "")
        self.trust_box.setText("I trust this file: load its model with torch")
        self.trust_imports.setText(span("muted", escape(f"Loading it imports {listed}"))
                                   if listed else "")
        self.trust_imports.setToolTip("\n".join(names))

    def show_target(self, target: str) -> None:
        """Only the rows that apply to ``target``."""
        for widget, targets in ((self.method_box, ("torchscript",)),
                                (self.exporter_box, ("onnx",)), (self.opset_spin, ("onnx",)),
                                (self.dynamic_box, ("onnx",)),
                                (self.input_names.parentWidget(), ("onnx",))):
            self.model_form.setRowVisible(widget, target in targets)

    def _kind_changed(self, *_args: Any) -> None:
        self._update_enabled()
        self.kind_changed.emit()

    def _update_enabled(self) -> None:
        kind = self.kind
        own = kind == "own"
        for w in (self.arch_box, self.detect_button, self.arch_label):
            w.setEnabled(kind == "torchvision")
        self.builder_edit.setEnabled(kind == "callable")
        needs_trust = own and self.file.report.verdict != "safe"
        self.trust_box.setVisible(needs_trust or own)
        self.model_form.setRowVisible(self.trust_imports,
                                      own and bool(self.trust_imports.text()))
        code = own and (self.file.ckpt.format == "torchscript" or not all(
            n.startswith(("torch.nn.", "torchvision.")) for n in self.file.report.flagged_names()))
        self.run_code_box.setVisible(code)

    def detect_arch(self, key: str, strip_prefixes: list[str]) -> None:
        """Run ``ckpt-inspector arch`` in a child process and list what fits."""
        self.arch_label.setText("Comparing with torchvision's models…")
        self.detect_button.setEnabled(False)
        proc = QProcess(self)
        cmd = cli_command("arch", self.file.path, "--key", key, "--json",
                          *[a for p in strip_prefixes for a in ("--strip-prefix", p)])
        proc.finished.connect(lambda *_a: self._arch_found(proc))
        proc.start(cmd[0], cmd[1:])
        self._arch_process = proc

    def _arch_found(self, proc: QProcess) -> None:
        self.detect_button.setEnabled(True)
        try:
            data = json.loads(bytes(proc.readAllStandardOutput()).decode())
        except ValueError:
            data = {"error": bytes(proc.readAllStandardError()).decode()[-200:]}
        if "candidates" not in data:  # a failure answers {"error", "exit_code"}
            why = escape(str(data.get("error", "")), quote=False)
            self.arch_label.setText(f"Detection failed: {why}")
            return
        found = data["candidates"]
        self.arch_box.clear()
        for c in found:
            extra = f", num_classes={c['num_classes']}" if c["num_classes"] else ""
            self.arch_box.addItem(f"{c['name']} ({c['score']:.0%} match{extra})", c["name"])
        if found and found[0]["exact"]:
            self.arch_label.setText(f"<b>{found[0]['name']}</b> fits exactly")
            self.shape_edit.setText(",".join(str(s) for s in found[0]["input_shape"]))
        else:
            self.arch_label.setText("No exact match: strip a prefix, or pick one by name")
        self.arch_box.addItem("auto", "auto")

    def fill(self, request: ExportRequest, key: str) -> None:
        """The model options of ``request`` (``key``: the part holding the weights)."""
        kind = self.model_box.currentData()
        if kind == "own":
            request.trust = self.trust_box.isChecked()
            request.run_code = self.run_code_box.isChecked()
            request.model_source = ("torchscript" if self.file.ckpt.format == "torchscript"
                                    else "pickled")
        else:
            request.key = key
            request.model_source = kind
            if kind == "callable":
                request.builder = self.builder_edit.text()
            else:
                request.arch = (self.arch_box.currentData()
                                or self.arch_box.currentText().split()[0])
        request.input_shape = parse_shape(self.shape_edit.text().replace(" ", "")
                                          .replace("x", ","))
        request.input_dtype = self.input_dtype.currentText()
        request.method = self.method_box.currentText()
        request.exporter = self.exporter_box.currentText()
        request.input_names = (self.input_names.text() or "input").split(",")
        request.output_names = (self.output_names.text() or "output").split(",")
        request.tolerance = self.tolerance.value()
        request.opset = self.opset_spin.value() or None
        request.dynamic_batch = self.dynamic_box.isChecked()


def _pair(a: QWidget, b: QWidget) -> QWidget:
    w = QWidget()
    row = QHBoxLayout(w)
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(a)
    row.addWidget(b)
    return w


class _Tolerance(QDoubleSpinBox):
    """A tolerance as people write it (0.0001, 1e-07), not with seven fixed decimals."""

    def textFromValue(self, value: float) -> str:
        return f"{value:g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int) -> Any:
        try:
            value = float(text)
        except ValueError:  # "", "1e", "1e-": on the way to a number
            ok = bool(re.fullmatch(r"[0-9.]*(e-?)?", text.strip().lower()))
            return (QValidator.State.Intermediate if ok else QValidator.State.Invalid,
                    text, pos)
        inside = self.minimum() <= value <= self.maximum()
        return (QValidator.State.Acceptable if inside else QValidator.State.Intermediate,
                text, pos)
