"""The export dialog on a checkpoint made of many files: names for a folder, the Hugging Face
sharded target (a folder, with a maximum shard size), and what it refuses."""

from __future__ import annotations

import json
import os

from ckpt_inspector.core.ops.export.request import ExportRequest
from ckpt_inspector.gui.dialogs.export_options import folder_output

from shards import save_sharded, state_dict
from support import open_and_wait


def _model(torch, tmp_path):
    sd = state_dict(torch)
    g = torch.Generator().manual_seed(3)
    sd.update({f"model.big.{i}.weight": torch.randn(256, 64, generator=g) for i in range(3)})
    folder = tmp_path / "llm"
    save_sharded(torch, folder, sd, "safetensors", shards=2)
    return folder, sd


def _dialog(qtbot, window, path):
    open_and_wait(qtbot, window, path)
    dialog = window.export_current()
    qtbot.addWidget(dialog)
    return dialog


def _choose(box, value):
    index = box.findData(value)
    assert index >= 0, value
    box.setCurrentIndex(index)


def test_a_folder_gets_names_from_its_own(qtbot, window, torch, tmp_path):
    folder, _ = _model(torch, tmp_path)
    options = _dialog(qtbot, window, folder).options
    _choose(options.target_box, "safetensors")
    assert options.output_edit.text() == str(tmp_path / "llm.safetensors")
    _choose(options.target_box, "state_dict")
    assert options.output_edit.text() == str(tmp_path / "llm_state_dict.pt")
    assert not options.shard_row.isVisible()
    _choose(options.target_box, "onnx")
    assert options.output_edit.text() == str(tmp_path / "llm.onnx")
    # opened by its index, the checkpoint is still named after its folder
    window.close_tab(0)
    options = _dialog(qtbot, window, folder / "model.safetensors.index.json").options
    _choose(options.target_box, "safetensors")
    assert options.output_edit.text() == str(tmp_path / "llm.safetensors")


def test_a_folder_to_hugging_face_shards(qtbot, window, torch, tmp_path):
    folder, sd = _model(torch, tmp_path)
    dialog = _dialog(qtbot, window, folder)
    options = dialog.options
    _choose(options.target_box, "hf-sharded")
    assert options.output_edit.text() == str(tmp_path / "llm_sharded")
    assert options.shard_row.isVisible() and options.max_shard_size() == 5 * 10**9
    options.update_preview()
    assert "in one file (model.safetensors)" in options.preview_label.text()
    _choose(options.shard_unit, 10**6)
    options.shard_size.setValue(0.1)  # 100 kB: each 64 KiB weight fills a shard
    options.update_preview()
    assert "in 3 shards of at most 0.1 MB" in options.preview_label.text()
    request = options.request()
    assert (request.to, request.max_shard_size) == ("hf-sharded", 100_000)
    from ckpt_inspector.cli import _parser

    assert ExportRequest.from_args(_parser().parse_args(request.to_argv())) == request
    options.export_button.click()
    qtbot.waitUntil(lambda: dialog.pages.currentIndex() == 2, timeout=180_000)
    text = dialog.result_view.toPlainText()
    assert "Exported and verified" in text, text
    out = tmp_path / "llm_sharded"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(sd)
    assert sorted(os.listdir(out))[0] == "model-00001-of-00003.safetensors"
    assert dialog.open_button.text() == "Open exported model" and dialog.open_button.isEnabled()
    with qtbot.waitSignal(window.file_shown, timeout=60_000):
        dialog.open_button.click()
    assert not dialog.isVisible()  # out of the way of the tab it opened
    assert window.current_view().path == str(out)
    assert window.current_view().file.ckpt.format == "hf-sharded"


def test_a_sharded_export_never_lands_on_its_source(qtbot, window, torch, tmp_path,
                                                    monkeypatch):
    folder, _ = _model(torch, tmp_path)
    dialog = _dialog(qtbot, window, folder)
    _choose(dialog.options.target_box, "hf-sharded")
    warnings = []
    monkeypatch.setattr("PySide6.QtWidgets.QMessageBox.warning",
                        lambda _p, _t, text: warnings.append(text))
    asked = []
    monkeypatch.setattr(dialog, "ask_overwrite", lambda path: asked.append(path) or False)
    for out in (folder, tmp_path):  # the folder itself, a folder that holds it
        dialog.options.output_edit.setText(str(out))
        dialog.options.export_button.click()
        assert dialog.process is None and "it comes from" in warnings.pop()
    assert not asked
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep")
    dialog.options.output_edit.setText(str(full))
    dialog.options.export_button.click()
    assert asked == [str(full)] and dialog.process is None
    assert os.listdir(full) == ["notes.txt"]


def test_the_folder_picked_for_shards(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert folder_output(str(empty), "llm_sharded") == str(empty)
    assert folder_output(str(tmp_path), "llm_sharded") == str(tmp_path / "llm_sharded")
    (empty / "model.safetensors").write_bytes(b"")  # an earlier export: replaced, after asking
    assert folder_output(str(empty), "llm_sharded") == str(empty)
