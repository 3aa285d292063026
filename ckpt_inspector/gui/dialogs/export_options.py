"""The export dialog's first page: what to export, how, and where; the keys previewed.

The key preview is the core's own plan, computed here as you type; the choices become
an :class:`~ckpt_inspector.core.ops.export.request.ExportRequest` (:meth:`request`).
"""

from __future__ import annotations

import os
from html import escape
from typing import Any

from PySide6.QtCore import QEvent, QSize, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector.core.errors import ExportError
from ckpt_inspector.core.ops.export import names as export_names
from ckpt_inspector.core.ops.export import plan as export_plan
from ckpt_inspector.core.ops.export.request import ExportRequest
from ckpt_inspector.core.ops.export.sharded import split
from ckpt_inspector.core.ops.session import LoadedFile
from ckpt_inspector.core.summary import human_bytes
from ckpt_inspector.gui.dialogs.export_model_options import ModelOptions
from ckpt_inspector.gui.remote import is_url, stem_of
from ckpt_inspector.gui.theme import set_muted, span

TARGETS = [
    ("state_dict", "state_dict (.pt)", ".pt", "Tensors only, loadable with "
     "torch.load(weights_only=True)"),
    ("safetensors", "safetensors", ".safetensors", "Tensors only, no code at all"),
    ("hf-sharded", "Hugging Face sharded (folder)", "", "A folder of safetensors shards "
     "(model-0000K-of-0000N) and their index, split as huggingface_hub does"),
    ("torchscript", "TorchScript (.pt)", ".pt", "A runnable model: trace or script"),
    ("onnx", "ONNX (.onnx)", ".onnx", "For onnxruntime and other runtimes"),
    ("pt2", "torch.export (.pt2)", ".pt2", "An exported program for torch.export.load"),
]
MODEL_TARGETS = ("torchscript", "onnx", "pt2")
FOLDER_TARGETS = ("hf-sharded",)  # the output is a folder
SHARD_UNITS = (("MB", 10**6), ("GB", 10**9))  # decimal, as huggingface_hub counts
# what the names of a sharded model's own files look like (a folder to export into again)
SHARDED_NAMES = ("model.safetensors", "model.safetensors.index.json")
PREVIEW_ROWS = 200
# what a suggested output's name adds to the file's stem, by target
_TAGS = {"state_dict": "_state_dict", "torchscript": "_torchscript", "hf-sharded": "_sharded"}


class ExportOptions(QWidget):
    """The choices; ``export_requested`` when Export is pressed, ``close_requested`` for
    Close."""

    export_requested = Signal()
    close_requested = Signal()

    def __init__(self, file: LoadedFile, device: str, parent: QWidget | None = None,
                 local_folder: str = ""):
        super().__init__(parent)
        self.file = file
        self.device = device
        self.local_folder = local_folder  # where a remote checkpoint's exports go
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(150)
        self._preview_timer.timeout.connect(self.update_preview)
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
        left.setContentsMargins(0, 0, 0, 0)
        # on a short screen the options scroll rather than squeezing every field to a
        # sliver of its height (a 1024×700 laptop with the model options shown)
        options = QWidget()
        options.setLayout(left)
        scroll = _OptionsScroll()
        scroll.setObjectName("optionsScroll")
        scroll.setWidget(options)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        right = QVBoxLayout()
        right.addWidget(QLabel("<b>Preview</b>"))
        right.addWidget(self._preview_table(), 1)
        right.addWidget(self.preview_label)
        body = QHBoxLayout()
        body.addWidget(scroll, 2)
        body.addLayout(right, 3)  # the keys need the room more than the option fields
        layout = QVBoxLayout(self)
        layout.addLayout(body, 1)
        out_form = QFormLayout()
        out_form.addRow("Save as", self._output_row())
        layout.addLayout(out_form)
        layout.addLayout(self._buttons())
        self._target_changed()

    def _target_choice(self) -> QComboBox:
        self.target_box = QComboBox()
        self.target_box.setObjectName("targetBox")
        for value, label, _suffix, tip in TARGETS:
            self.target_box.addItem(label, value)
            self.target_box.setItemData(self.target_box.count() - 1, tip,
                                        Qt.ItemDataRole.ToolTipRole)
        self.target_box.currentIndexChanged.connect(self._target_changed)
        self.target_hint = QLabel()
        self.target_hint.setWordWrap(True)
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
        # keys differ at their end (running_mean, running_var): cut them in the middle,
        # and the whole key is the cell's tooltip
        self.preview.setTextElideMode(Qt.TextElideMode.ElideMiddle)
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
        self.tensor_form = tensors = QFormLayout()
        tensors.addRow("Cast floating tensors to", self.dtype_box)
        tensors.addRow("Device (map_location)", self.device_label)
        tensors.addRow("safetensors metadata", self.metadata_edit)
        tensors.addRow("Max shard size", self._shard_size_row())
        self.tensor_group = QGroupBox("Tensors")
        self.tensor_group.setLayout(tensors)
        return self.tensor_group

    def _shard_size_row(self) -> QWidget:
        """Hugging Face sharded: the largest shard (5 GB, huggingface_hub's default)."""
        self.shard_size = QDoubleSpinBox()
        self.shard_size.setObjectName("shardSize")
        self.shard_size.setDecimals(2)
        self.shard_size.setRange(0.01, 1_000_000)
        self.shard_size.setValue(5)
        self.shard_unit = QComboBox()
        for name, factor in SHARD_UNITS:
            self.shard_unit.addItem(name, factor)
        self.shard_unit.setCurrentIndex(len(SHARD_UNITS) - 1)
        tip = ("Shards are filled in key order up to this size; a larger tensor gets a "
               "shard of its own. 1 GB = 10⁹ bytes, as huggingface_hub counts.")
        for w in (self.shard_size, self.shard_unit):
            w.setToolTip(tip)
        self.shard_size.valueChanged.connect(lambda _v: self._preview_timer.start())
        self.shard_unit.currentIndexChanged.connect(lambda _i: self._preview_timer.start())
        self.shard_row = QWidget()
        row = QHBoxLayout(self.shard_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.shard_size)
        row.addWidget(self.shard_unit)
        row.addStretch(1)
        return self.shard_row

    def max_shard_size(self) -> int:
        """The shard size chosen, in bytes."""
        return round(self.shard_size.value() * self.shard_unit.currentData())

    def _shard_size_text(self) -> str:
        return f"{self.shard_size.value():g} {self.shard_unit.currentText()}"

    def _model_group(self) -> ModelOptions:
        """Model targets: where the model comes from, the example input, the exporter."""
        self.model_group = ModelOptions(self.file)
        self.model_group.detect_requested.connect(self.detect_arch)
        self.model_group.kind_changed.connect(self._model_changed)
        return self.model_group

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
        self.export_button.clicked.connect(self.export_requested)
        cancel = QPushButton("Close")
        cancel.clicked.connect(self.close_requested)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(cancel)
        buttons.addWidget(self.export_button)
        return buttons

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
        self.model_group.show_target(target)
        # safetensors' header only: no room taken by a field that does nothing
        self.tensor_form.setRowVisible(self.metadata_edit,
                                       target in ("safetensors", "hf-sharded"))
        self.tensor_form.setRowVisible(self.shard_row, target == "hf-sharded")
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

    def _model_changed(self) -> None:
        own = self.model_group.kind == "own"
        self.source_box.setEnabled(not own or self.target not in MODEL_TARGETS)

    def _suggest_output(self) -> None:
        """Name the output for the target: while its name is one of the suggestions, the
        target's suggestion (in the folder chosen); a name of the user's own keeps its
        folder and stem and takes the target's extension."""
        folder, stem = output_base(self.file, self.local_folder)
        suggested = {t: f"{stem}{_TAGS.get(t, '')}{export_names.EXTENSIONS[t][0]}"
                     for t, *_rest in TARGETS}
        current = self.output_edit.text().strip()
        if not current:
            self.output_edit.setText(os.path.join(folder, suggested[self.target]))
            return
        head, name = os.path.split(current.rstrip(os.sep) or current)
        named = (os.path.join(head, suggested[self.target]) if name in suggested.values()
                 else export_names.with_extension(self.target, current))
        if named != current:
            self.output_edit.setText(named)

    @property
    def writes_folder(self) -> bool:
        return self.target in FOLDER_TARGETS

    def _browse(self) -> None:
        current = self.output_edit.text()
        if not self.writes_folder:
            path, _ = QFileDialog.getSaveFileName(self, "Export to", current)
            if path:
                self.output_edit.setText(path)
            return
        start = os.path.dirname(current) if current else \
            output_base(self.file, self.local_folder)[0]
        chosen = QFileDialog.getExistingDirectory(
            self, "Export into a folder (an empty or new one)", start)
        if chosen:
            self.output_edit.setText(folder_output(chosen, os.path.basename(current)))

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
        fmt = "pt" if self.target == "state_dict" else "safetensors"
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
            for col, text in enumerate((old, new if new is not None else "(left out)",
                                        str(list(t.shape)))):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.preview.setItem(row, col, item)
        # keys written as they are read: one column for them, with the room of two
        renamed = any(new != old for old, new in mapping)
        self.preview.setColumnHidden(1, not renamed)
        self.preview.horizontalHeaderItem(0).setText("Key in the file" if renamed else "Key")
        p = plan.preview()
        text = f"{p['tensors']:,} tensors, {human_bytes(p['bytes'])}"
        if p["excluded"]:
            text += f" · {p['excluded']:,} left out"
        if p["renamed"]:
            text += f" · {p['renamed']:,} renamed"
        if p["not_cast"]:
            text += f" · {p['not_cast']:,} float8 and other tensors keep their dtype"
        if self.target == "hf-sharded" and p["tensors"]:
            shards = len(split(plan, self.max_shard_size()))
            text += (f" · in {shards:,} shards of at most {self._shard_size_text()}"
                     if shards > 1 else " · in one file (model.safetensors): it fits in "
                     f"{self._shard_size_text()}")
        if len(mapping) > PREVIEW_ROWS:
            text += f" (first {PREVIEW_ROWS} shown)"
        self.preview_label.setText(text)
        self.export_button.setEnabled(True)

    def detect_arch(self) -> None:
        """Which torchvision architectures fit the chosen part's keys and shapes."""
        self.model_group.detect_arch(self.source_key, self.rules().strip_prefixes)

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
            self.model_group.fill(request, self.source_key)
        else:
            request.key = self.source_key
            request.dtype = self.dtype_box.currentData()
            if self.target in ("safetensors", "hf-sharded"):
                request.metadata = dict(part.strip().split("=", 1)
                                        for part in self.metadata_edit.text().split(";")
                                        if "=" in part)
            if self.target == "hf-sharded":
                request.max_shard_size = self.max_shard_size()
        return request


def output_base(file: LoadedFile, local_folder: str = "") -> tuple[str, str]:
    """Where exports go by default and the name they start with: beside the file, after its
    stem; beside a checkpoint folder (opened by the folder, its index or its .metadata),
    after the folder's name; for a URL, in ``local_folder`` (else the home folder), after
    the URL's last component."""
    if is_url(file.path):
        return local_folder or os.path.expanduser("~"), stem_of(file.path)
    path = file.path.rstrip(os.sep) or file.path
    if os.path.isdir(path) or file.ckpt.files:
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        return os.path.dirname(folder), os.path.basename(folder)
    return os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]


def folder_output(chosen: str, name: str) -> str:
    """The folder a sharded export goes to when the user picks ``chosen``: that folder if
    it is empty or a sharded model already (it is replaced, after asking), else a new
    folder ``name`` in it."""
    try:
        names = os.listdir(chosen)
    except OSError:
        return chosen
    if not names or any(n in SHARDED_NAMES for n in names) or not name:
        return chosen
    return os.path.join(chosen, name)


class _OptionsScroll(QScrollArea):
    """Scrolls the options up and down only: as wide as they need (the model options,
    shown for TorchScript and ONNX, need more), never cut off at the right."""

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        inner = self.widget()
        if inner is not None:
            hint.setWidth(inner.minimumSizeHint().width()
                          + self.verticalScrollBar().sizeHint().width())
        return hint

    def eventFilter(self, watched: Any, event: QEvent) -> bool:
        # the options' needs change when rows show or hide: the dialog's layout asks again
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)
