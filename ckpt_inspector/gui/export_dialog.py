"""File > Export: choose what and how, watch it run, read the verification figures.

The dialog builds a ``ckpt-inspector export`` command and runs it as a child
process (torch never loads into the window's process), reading its JSON progress
lines; Cancel kills it and removes its partial output. The key preview is the
core's own plan, computed here as you type.
"""

from __future__ import annotations

import json
import os
from html import escape
from typing import Any

from PySide6.QtCore import QProcess, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.errors import ExportError
from ckpt_inspector.core.io.atomic import remove_partial
from ckpt_inspector.core.ops.export import plan as export_plan
from ckpt_inspector.core.ops.export.request import ExportRequest, parse_shape
from ckpt_inspector.core.ops.export.result import ExportResult, Row
from ckpt_inspector.core.progress import Progress, parse_line
from ckpt_inspector.core.summary import human_bytes
from ckpt_inspector.gui.commands import cli_command
from ckpt_inspector.gui.loading import LoadedFile
from ckpt_inspector.gui.theme import color, set_muted, span

TARGETS = [
    ("state_dict", "state_dict (.pt)", ".pt", "Tensors only, loadable with "
     "torch.load(weights_only=True)"),
    ("safetensors", "safetensors", ".safetensors", "Tensors only, no code at all"),
    ("torchscript", "TorchScript (.pt)", ".pt", "A runnable model: trace or script"),
    ("onnx", "ONNX (.onnx)", ".onnx", "For onnxruntime and other runtimes"),
    ("pt2", "torch.export (.pt2)", ".pt2", "An exported program for torch.export.load"),
]
MODEL_TARGETS = ("torchscript", "onnx", "pt2")
PREVIEW_ROWS = 200


class ExportDialog(QDialog):
    open_requested = Signal(str)

    def __init__(self, file: LoadedFile, device: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.file = file
        self.device = device
        self.process: QProcess | None = None
        self.result: ExportResult | None = None
        self._stdout = b""
        self.setWindowTitle(f"Export {os.path.basename(file.path)}")
        self.setMinimumSize(900, 640)
        self.resize(1060, 720)
        self.pages = QStackedWidget()
        self.pages.addWidget(self._options_page())
        self.pages.addWidget(self._progress_page())
        self.pages.addWidget(self._result_page())
        layout = QVBoxLayout(self)
        layout.addWidget(self.pages)
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(150)
        self._preview_timer.timeout.connect(self.update_preview)
        self._target_changed()

    # -- page 1: options ------------------------------------------------------------------
    def _options_page(self) -> QWidget:
        page = QWidget()
        top = QFormLayout()
        top.addRow("Export to", self._target_choice())
        top.addRow("", self.target_hint)
        top.addRow("From", self._source_choice())
        left = QVBoxLayout()
        left.addLayout(top)
        left.addWidget(self._keys_group())
        left.addWidget(self._tensor_group())
        left.addWidget(self._model_group())
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(QLabel("<b>Preview</b>"))
        right.addWidget(self._preview_table(), 1)
        right.addWidget(self.preview_label)
        body = QHBoxLayout()
        body.addLayout(left, 3)
        body.addLayout(right, 2)
        layout = QVBoxLayout(page)
        layout.addLayout(body, 1)
        out_form = QFormLayout()
        out_form.addRow("Save as", self._output_row())
        layout.addLayout(out_form)
        layout.addLayout(self._buttons())
        return page

    def _target_choice(self) -> QComboBox:
        self.target_box = QComboBox()
        self.target_box.setObjectName("targetBox")
        for value, label, _suffix, tip in TARGETS:
            self.target_box.addItem(label, value)
            self.target_box.setItemData(self.target_box.count() - 1, tip,
                                        Qt.ItemDataRole.ToolTipRole)
        self.target_box.currentIndexChanged.connect(self._target_changed)
        self.target_hint = QLabel()
        set_muted(self.target_hint)
        return self.target_box

    def _source_choice(self) -> QComboBox:
        self.source_box = QComboBox()
        self.source_box.setObjectName("sourceBox")
        for s in export_plan.sources(self.file.ckpt):
            self.source_box.addItem(f"{s.label}, {human_bytes(s.nbytes)}", s.key)
        self.source_box.currentIndexChanged.connect(self._source_changed)
        return self.source_box

    def _keys_group(self) -> QGroupBox:
        """The key rules, each change previewed."""
        self.strip_edit = QLineEdit()
        self.strip_edit.setPlaceholderText("e.g. module.")
        self.add_edit = QLineEdit()
        self.rename_from = QLineEdit()
        self.rename_from.setPlaceholderText("regex")
        self.rename_to = QLineEdit()
        self.rename_to.setPlaceholderText("replacement")
        self.include_edit = QLineEdit()
        self.include_edit.setPlaceholderText("regex: keep only matching keys")
        self.exclude_edit = QLineEdit()
        self.exclude_edit.setPlaceholderText("regex: leave matching keys out")
        for w in (self.strip_edit, self.add_edit, self.rename_from, self.rename_to,
                  self.include_edit, self.exclude_edit):
            w.textChanged.connect(lambda _t: self._preview_timer.start())
        rename = QHBoxLayout()
        rename.addWidget(self.rename_from)
        rename.addWidget(QLabel("→"))
        rename.addWidget(self.rename_to)
        keys = QFormLayout()
        keys.addRow("Strip prefix", self.strip_edit)
        keys.addRow("Add prefix", self.add_edit)
        keys.addRow("Rename", rename)
        keys.addRow("Include", self.include_edit)
        keys.addRow("Exclude", self.exclude_edit)
        self.keys_group = QGroupBox("Keys")
        self.keys_group.setLayout(keys)
        return self.keys_group

    def _preview_table(self) -> QTableWidget:
        self.preview = QTableWidget(0, 3)
        self.preview.setObjectName("keyPreview")
        self.preview.setHorizontalHeaderLabels(["Key in the file", "Key in the export", "Shape"])
        header = self.preview.horizontalHeader()
        header.setSectionResizeMode(0, header.ResizeMode.Stretch)
        header.setSectionResizeMode(1, header.ResizeMode.Stretch)
        header.setSectionResizeMode(2, header.ResizeMode.ResizeToContents)
        self.preview.verticalHeader().setVisible(False)
        self.preview.verticalHeader().setDefaultSectionSize(
            self.preview.fontMetrics().height() + 6)
        self.preview.setMinimumWidth(420)
        self.preview.setWordWrap(False)
        self.preview.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.preview_label = QLabel()
        self.preview_label.setObjectName("previewLabel")
        return self.preview

    def _tensor_group(self) -> QGroupBox:
        """state_dict and safetensors: dtype, device and metadata."""
        self.dtype_box = QComboBox()
        self.dtype_box.addItem("keep", None)
        for d in export_plan.CASTS:
            self.dtype_box.addItem(d, d)
        self.dtype_box.currentIndexChanged.connect(lambda _i: self._preview_timer.start())
        self.device_label = QLabel(self.device)
        self.metadata_edit = QLineEdit()
        self.metadata_edit.setPlaceholderText("key=value; key2=value2")
        meta = self.file.ckpt.metadata.get("__metadata__")
        if isinstance(meta, dict):
            self.metadata_edit.setText("; ".join(f"{k}={v}" for k, v in meta.items()))
        tensors = QFormLayout()
        tensors.addRow("Cast floating tensors to", self.dtype_box)
        tensors.addRow("Device (map_location)", self.device_label)
        tensors.addRow("safetensors metadata", self.metadata_edit)
        self.tensor_group = QGroupBox("Tensors")
        self.tensor_group.setLayout(tensors)
        return self.tensor_group

    def _model_group(self) -> QGroupBox:
        """Model targets: where the model comes from, the example input, the exporter."""
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
        self._set_trust_text()
        model.addRow("", self.trust_box)
        model.addRow("", self.run_code_box)
        self._exporter_rows(model)
        self.model_group = QGroupBox("Model")
        self.model_group.setLayout(model)
        return self.model_group

    def _model_choice(self) -> QComboBox:
        self.model_box = QComboBox()
        self.model_box.setObjectName("modelBox")
        holds_model = self.file.ckpt.format == "torchscript" or any(
            n.kind == "module" for n in self.file.ckpt.root.walk())
        dangerous = self.file.report.verdict == "dangerous"
        if holds_model:
            self.model_box.addItem("the model in this file (loaded with torch)", "own")
            if dangerous:
                self.model_box.model().item(0).setEnabled(False)
                self.model_box.setItemData(0, "Dangerous file: its model is not loaded",
                                           Qt.ItemDataRole.ToolTipRole)
        self.model_box.addItem("a torchvision architecture, with the weights from the file",
                               "torchvision")
        self.model_box.addItem("my builder (module:function), with the weights from the file",
                               "callable")
        if holds_model and dangerous:
            self.model_box.setCurrentIndex(1)
        self.model_box.currentIndexChanged.connect(self._model_changed)
        return self.model_box

    def _arch_row(self) -> QHBoxLayout:
        self.arch_box = QComboBox()
        self.arch_box.setObjectName("archBox")
        self.arch_box.setEditable(True)
        self.arch_box.addItem("auto", "auto")
        self.detect_button = QPushButton("Detect")
        self.detect_button.setToolTip("Compare the keys and shapes with every torchvision "
                                      "model (no weights are downloaded)")
        self.detect_button.clicked.connect(self.detect_arch)
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
        self.tolerance = QDoubleSpinBox()
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

    def _output_row(self) -> QHBoxLayout:
        self.output_edit = QLineEdit()
        self.output_edit.setObjectName("outputEdit")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        out_row = QHBoxLayout()
        out_row.addWidget(self.output_edit, 1)
        out_row.addWidget(browse)
        return out_row

    def _buttons(self) -> QHBoxLayout:
        self.export_button = QPushButton("Export")
        self.export_button.setObjectName("exportButton")
        self.export_button.setDefault(True)
        self.export_button.clicked.connect(self.start)
        cancel = QPushButton("Close")
        cancel.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(cancel)
        buttons.addWidget(self.export_button)
        return buttons

    def _set_trust_text(self) -> None:
        names = self.file.report.flagged_names()
        listed = ", ".join(names[:3]) + (" …" if len(names) > 3 else "")
        self.trust_box.setText("I trust this file: load its model with torch"
                               + (f" (imports {listed})" if listed else ""))

    # -- reacting to choices ----------------------------------------------------------------
    @property
    def target(self) -> str:
        return self.target_box.currentData()

    def _target_changed(self, *_args: Any) -> None:
        target = self.target
        hint = next(t[3] for t in TARGETS if t[0] == target)
        self.target_hint.setText(hint)
        model = target in MODEL_TARGETS
        self.model_group.setVisible(model)
        self.tensor_group.setVisible(not model)
        form = self.model_form
        for widget, targets in ((self.method_box, ("torchscript",)),
                                (self.exporter_box, ("onnx",)), (self.opset_spin, ("onnx",)),
                                (self.dynamic_box, ("onnx",)),
                                (self.input_names.parentWidget(), ("onnx",))):
            form.setRowVisible(widget, target in targets)
        self.metadata_edit.setEnabled(target == "safetensors")
        self._model_changed()
        self._suggest_output()
        self._preview_timer.start()

    def _source_changed(self, *_args: Any) -> None:
        self._suggest_prefix()
        self._preview_timer.start()

    def _suggest_prefix(self) -> None:
        items = export_plan.state_dict_items(export_plan.find_node(self.file.ckpt, self.source_key))
        prefix = export_plan.common_prefix([k for k, _ in items])
        if prefix in ("module.", "model.", "_orig_mod.") and not self.strip_edit.text():
            self.strip_edit.setText(prefix)

    def _model_changed(self, *_args: Any) -> None:
        kind = self.model_box.currentData()
        own = kind == "own"
        for w in (self.arch_box, self.detect_button, self.arch_label):
            w.setEnabled(kind == "torchvision")
        self.builder_edit.setEnabled(kind == "callable")
        needs_trust = own and self.file.report.verdict != "safe"
        self.trust_box.setVisible(needs_trust or own)
        code = own and (self.file.ckpt.format == "torchscript" or not all(
            n.startswith(("torch.nn.", "torchvision.")) for n in self.file.report.flagged_names()))
        self.run_code_box.setVisible(code)
        self.source_box.setEnabled(not own or self.target not in MODEL_TARGETS)

    def _suggest_output(self) -> None:
        suffix = next(t[2] for t in TARGETS if t[0] == self.target)
        folder = os.path.dirname(self.file.path)
        stem = os.path.splitext(os.path.basename(self.file.path))[0]
        tag = {"state_dict": "_state_dict", "torchscript": "_torchscript"}.get(self.target, "")
        current = self.output_edit.text()
        if not current or os.path.dirname(current) == folder:
            self.output_edit.setText(os.path.join(folder, f"{stem}{tag}{suffix}"))

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export to", self.output_edit.text())
        if path:
            self.output_edit.setText(path)

    @property
    def source_key(self) -> str:
        return self.source_box.currentData() or ""

    def rules(self) -> export_plan.KeyRules:
        strip = [p.strip() for p in self.strip_edit.text().split(",") if p.strip()]
        renames = ([(self.rename_from.text(), self.rename_to.text())]
                   if self.rename_from.text() else [])
        return export_plan.KeyRules(strip, self.add_edit.text().strip(), renames,
                           [self.include_edit.text()] if self.include_edit.text() else [],
                           [self.exclude_edit.text()] if self.exclude_edit.text() else [])

    def update_preview(self) -> None:
        """The core's plan for these choices: the keys as they will be written."""
        fmt = "safetensors" if self.target == "safetensors" else "pt"
        try:
            plan = export_plan.make_plan(self.file.ckpt, self.source_key, self.rules(),
                                self.dtype_box.currentData(), self.device, fmt)
        except ExportError as err:
            self.preview.setRowCount(0)
            self.preview_label.setText(span("danger", escape(str(err))))
            self.export_button.setEnabled(self.target in MODEL_TARGETS)
            return
        items = export_plan.state_dict_items(export_plan.find_node(self.file.ckpt, self.source_key))
        mapping = self.rules().apply([k for k, _ in items])
        self.preview.setRowCount(min(len(mapping), PREVIEW_ROWS))
        for row, ((old, new), (_k, t)) in enumerate(zip(mapping[:PREVIEW_ROWS], items)):
            self.preview.setItem(row, 0, QTableWidgetItem(old))
            self.preview.setItem(row, 1, QTableWidgetItem(new if new is not None else "(left out)"))
            self.preview.setItem(row, 2, QTableWidgetItem(str(list(t.shape))))
        p = plan.preview()
        text = f"{p['tensors']:,} tensors, {human_bytes(p['bytes'])}"
        if p["excluded"]:
            text += f" · {p['excluded']:,} left out"
        if p["renamed"]:
            text += f" · {p['renamed']:,} renamed"
        if p["not_cast"]:
            text += f" · {p['not_cast']:,} float8 and other tensors keep their dtype"
        if len(mapping) > PREVIEW_ROWS:
            text += f" (first {PREVIEW_ROWS} shown)"
        self.preview_label.setText(text)
        self.export_button.setEnabled(True)

    def detect_arch(self) -> None:
        """Run ``ckpt-inspector arch`` in a child process and list what fits."""
        self.arch_label.setText("Comparing with torchvision's models…")
        self.detect_button.setEnabled(False)
        proc = QProcess(self)
        cmd = cli_command("arch", self.file.path, "--key", self.source_key, "--json",
                          *[a for p in self.rules().strip_prefixes for a in ("--strip-prefix", p)])
        proc.finished.connect(lambda *_a: self._arch_found(proc))
        proc.start(cmd[0], cmd[1:])
        self._arch_process = proc

    def _arch_found(self, proc: QProcess) -> None:
        self.detect_button.setEnabled(True)
        try:
            data = json.loads(bytes(proc.readAllStandardOutput()).decode())
        except ValueError:
            self.arch_label.setText("Detection failed: "
                                    + bytes(proc.readAllStandardError()).decode()[-200:])
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

    # -- running -------------------------------------------------------------------------------
    def request(self) -> ExportRequest:
        """The export these choices ask for (:class:`ExportUsageError` for an example input
        shape that is not sizes such as 1,3,224,224)."""
        r = self.rules()
        request = ExportRequest(
            self.file.path, self.target, self.output_edit.text().strip(),
            strip_prefix=r.strip_prefixes, add_prefix=r.add_prefix, rename=r.renames,
            include=r.include, exclude=r.exclude, device=self.device)
        if self.target in MODEL_TARGETS:
            self._model_request(request)
        else:
            request.key = self.source_key
            request.dtype = self.dtype_box.currentData()
            if self.target == "safetensors":
                request.metadata = dict(part.strip().split("=", 1)
                                        for part in self.metadata_edit.text().split(";")
                                        if "=" in part)
        return request

    def _model_request(self, request: ExportRequest) -> None:
        kind = self.model_box.currentData()
        if kind == "own":
            request.trust = self.trust_box.isChecked()
            request.run_code = self.run_code_box.isChecked()
            request.model_source = ("torchscript" if self.file.ckpt.format == "torchscript"
                                    else "pickled")
        else:
            request.key = self.source_key
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

    def command(self, request: ExportRequest) -> list[str]:
        return cli_command(*request.to_argv(), "--progress")

    def start(self) -> None:
        out = self.output_edit.text().strip()
        if not out:
            return
        if os.path.abspath(out) == os.path.abspath(self.file.path):
            QMessageBox.warning(self, "Export", "The export would replace the file it comes "
                                "from: choose another name.")
            return
        try:
            request = self.request()
        except ExportError as err:
            QMessageBox.warning(self, "Export", str(err))
            return
        if os.path.exists(out):
            if not self.ask_overwrite(out):
                return
            request.overwrite = True
        cmd = self.command(request)
        self._stdout = b""
        self.result = None
        self.stage_label.setText("Starting…")
        self.bar.setRange(0, 0)
        self.pages.setCurrentIndex(1)
        self.process = QProcess(self)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._finished)
        self.process.start(cmd[0], cmd[1:])

    def ask_overwrite(self, path: str) -> bool:
        answer = QMessageBox.question(self, "Replace file?",
                                      f"{os.path.basename(path)} exists. Replace it?",
                                      QMessageBox.StandardButton.Yes
                                      | QMessageBox.StandardButton.Cancel,
                                      QMessageBox.StandardButton.Cancel)
        return answer == QMessageBox.StandardButton.Yes

    def _read(self) -> None:
        self._stdout += bytes(self.process.readAllStandardOutput())
        *lines, self._stdout = self._stdout.split(b"\n")
        for line in lines:
            message = parse_line(line)
            if isinstance(message, Progress):
                self._show_progress(message)
            elif isinstance(message, dict) and message.get("event") == "result":
                self.result = ExportResult.from_json(message)

    def _show_progress(self, report: Progress) -> None:
        if report.total:
            scale = max(1, report.total // 1_000_000)
            self.bar.setRange(0, report.total // scale)
            self.bar.setValue(report.done // scale)
        self.stage_label.setText(f"{report.stage.capitalize()}… {escape(report.detail)}")

    def _finished(self, code: int, _status: Any) -> None:
        self._read()
        if self._stdout.strip():
            self._stdout += b"\n"
            self._read()
        err = bytes(self.process.readAllStandardError()).decode("utf-8", "replace").strip()
        self.process = None
        self.show_result(code, err)

    def cancel(self) -> None:
        if self.process is not None:
            process = self.process
            process.finished.disconnect(self._finished)
            process.terminate()  # SIGTERM: the command removes its temporary files
            if not process.waitForFinished(5000):
                process.kill()
                process.waitForFinished(5000)
            self.process = None
        self._remove_partial()
        self.pages.setCurrentIndex(0)

    def _remove_partial(self) -> None:
        """What a killed export leaves beside its output."""
        remove_partial(self.output_edit.text().strip())

    # -- pages 2 and 3 ---------------------------------------------------------------------------
    def _progress_page(self) -> QWidget:
        page = QWidget()
        self.stage_label = QLabel()
        self.stage_label.setObjectName("stageLabel")
        self.bar = QProgressBar()
        cancel = QPushButton("Cancel")
        cancel.setObjectName("exportCancel")
        cancel.clicked.connect(self.cancel)
        layout = QVBoxLayout(page)
        layout.addStretch(1)
        layout.addWidget(self.stage_label)
        layout.addWidget(self.bar)
        layout.addWidget(cancel, 0, Qt.AlignmentFlag.AlignRight)
        layout.addStretch(2)
        return page

    def _result_page(self) -> QWidget:
        page = QWidget()
        self.result_view = QTextBrowser()
        self.result_view.setObjectName("resultView")
        self.open_button = QPushButton("Open exported file")
        self.open_button.setObjectName("openExported")
        self.open_button.clicked.connect(self._open_exported)
        back = QPushButton("Export another")
        back.clicked.connect(lambda: self.pages.setCurrentIndex(0))
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        buttons = QHBoxLayout()
        buttons.addWidget(back)
        buttons.addStretch(1)
        buttons.addWidget(self.open_button)
        buttons.addWidget(close)
        layout = QVBoxLayout(page)
        layout.addWidget(self.result_view, 1)
        layout.addLayout(buttons)
        return page

    def show_result(self, code: int, err: str) -> None:
        r = self.result
        self.pages.setCurrentIndex(2)
        if r is None:
            self.open_button.setEnabled(False)
            self.result_view.setHtml(f"<h3 style='color:{color('danger')}'>Export failed</h3>"
                                     f"<p>{escape(err.splitlines()[-1] if err else f'exit {code}')}"
                                     "</p>")
            return
        self.open_button.setEnabled(r.written and os.path.exists(r.path))
        table = "".join(f"<tr><th align='left' style='padding-right:12px'>{escape(row.label)}"
                        f"</th><td>{_cell(row)}</td></tr>" for row in r.rows())
        self.result_view.setHtml(f"{_heading(r)}<table>{table}</table>")

    def _open_exported(self) -> None:
        if self.result and self.result.path:
            self.open_requested.emit(self.result.path)

    def reject(self) -> None:
        if self.process is not None:
            self.cancel()
        super().reject()


def _pair(a: QWidget, b: QWidget) -> QWidget:
    w = QWidget()
    row = QHBoxLayout(w)
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(a)
    row.addWidget(b)
    return w


def _cell(row: Row) -> str:
    text = escape(row.value)
    return span(row.level, text) if row.level else text


def _heading(r: ExportResult) -> str:
    """What became of the export, in a heading (and a line under it)."""
    if r.status == "passed":
        return f"<h3 style='color:{color('ok')}'>Exported and verified</h3>"
    if r.status == "not verified":
        return (f"<h3 style='color:{color('warning')}'>Exported, not verified</h3><p>"
                + escape(str(r.onnxruntime or "the export was not checked")) + "</p>")
    if r.written:
        return f"<h3 style='color:{color('danger')}'>Exported, but the verification failed</h3>"
    return (f"<h3 style='color:{color('danger')}'>The verification failed: nothing was written"
            "</h3><p>Any file already at that name is unchanged.</p>")
