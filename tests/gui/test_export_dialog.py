"""The export dialog, driven as a user would: choose, preview, export, read the figures."""

from __future__ import annotations

import os

from ckpt_inspector.core.ops.export.request import ExportRequest
from ckpt_inspector.core.ops.export.result import ExportResult

from support import open_and_wait


def dialog_for(qtbot, window, path):
    open_and_wait(qtbot, window, path)
    dialog = window.export_current()
    qtbot.addWidget(dialog)
    return dialog


def choose(box, value):
    box.setCurrentIndex(box.findData(value))


def wait_result(qtbot, dialog, timeout=180_000):
    qtbot.waitUntil(lambda: dialog.pages.currentIndex() == 2, timeout=timeout)
    return dialog.result_view.toPlainText()


def test_state_dict_to_safetensors_and_open_it(qtbot, window, training_ckpt, tmp_path):
    dialog = dialog_for(qtbot, window, training_ckpt[0])
    # the weights, not the optimizer
    assert dialog.options.source_box.currentData() == "model_state_dict"
    choose(dialog.options.target_box, "safetensors")
    choose(dialog.options.dtype_box, "float16")
    dialog.options.add_edit.setText("net.")
    dialog.options.update_preview()
    assert dialog.options.preview.item(0, 1).text().startswith("net.")
    out = tmp_path / "weights.safetensors"
    dialog.options.output_edit.setText(str(out))
    dialog.options.export_button.click()
    text = wait_result(qtbot, dialog)
    assert "Exported and verified" in text and "cast" in text, text
    assert out.exists()
    with qtbot.waitSignal(window.file_shown, timeout=30_000):
        dialog.open_button.click()
    assert window.current_view().path == str(out)
    keys = [k for k, _ in window.current_view().file.ckpt.tensors()]
    assert all(key_path[0].startswith("net.") for key_path in keys)


def test_state_dict_to_torchscript_with_detected_architecture(qtbot, window, resnet_params,
                                                              tmp_path):
    dialog = dialog_for(qtbot, window, resnet_params[0])
    choose(dialog.options.target_box, "torchscript")
    assert dialog.options.model_group.model_box.currentData() == "torchvision"
    dialog.options.model_group.detect_button.click()
    model = dialog.options.model_group
    qtbot.waitUntil(lambda: "fits exactly" in model.arch_label.text(), timeout=120_000)
    assert dialog.options.model_group.arch_box.currentData() == "resnet18"
    assert dialog.options.model_group.shape_edit.text() == "1,3,224,224"
    dialog.options.output_edit.setText(str(tmp_path / "r18_ts.pt"))
    dialog.options.export_button.click()
    text = wait_result(qtbot, dialog)
    assert "Exported and verified" in text and "max abs difference" in text, text


def test_preview_shows_whole_keys(qtbot, window, resnet_params):
    """resnet18's longest keys (layer4.0.downsample.1.num_batches_tracked) fit whole, in
    one key column while the export keeps the file's keys, in two once a rule renames."""
    dialog = dialog_for(qtbot, window, resnet_params[0])
    dialog.resize(1280, 720)
    dialog.show()
    options = dialog.options
    for target in ("state_dict", "onnx"):
        choose(options.target_box, target)
        options.update_preview()
        qtbot.wait(50)  # the layout settles
        table = options.preview
        assert table.isColumnHidden(1) and table.horizontalHeaderItem(0).text() == "Key"
        rows = range(table.rowCount())
        longest = max((table.item(r, 0).text() for r in rows), key=len)
        need = table.fontMetrics().horizontalAdvance(longest)
        assert table.columnWidth(0) > need, (target, table.columnWidth(0), need, longest)
    options.add_edit.setText("net.")
    options.update_preview()
    assert not options.preview.isColumnHidden(1)
    assert options.preview.horizontalHeaderItem(0).text() == "Key in the file"


def test_preview_shows_rule_errors(qtbot, window, tensors_file):
    dialog = dialog_for(qtbot, window, tensors_file[0])
    dialog.options.rename_from.setText("(")
    dialog.options.update_preview()
    assert "invalid" in dialog.options.preview_label.text()
    assert not dialog.options.export_button.isEnabled()
    dialog.options.rename_from.setText("")
    dialog.options.exclude_edit.setText("^x$")
    dialog.options.update_preview()
    assert "1 left out" in dialog.options.preview_label.text()
    assert dialog.options.export_button.isEnabled()


def test_existing_file_is_not_replaced_without_asking(qtbot, window, tensors_file, tmp_path,
                                                      monkeypatch):
    dialog = dialog_for(qtbot, window, tensors_file[0])
    out = tmp_path / "exists.pt"
    out.write_bytes(b"keep me")
    dialog.options.output_edit.setText(str(out))
    monkeypatch.setattr(dialog, "ask_overwrite", lambda path: False)
    dialog.options.export_button.click()
    assert dialog.process is None and out.read_bytes() == b"keep me"
    dialog.options.output_edit.setText(str(tensors_file[0]))  # the source itself: refused outright
    monkeypatch.setattr("PySide6.QtWidgets.QMessageBox.warning", lambda *a, **k: None)
    dialog.options.export_button.click()
    assert dialog.process is None


def test_cancel_leaves_no_partial_file(qtbot, window, resnet_params, tmp_path):
    dialog = dialog_for(qtbot, window, resnet_params[0])
    choose(dialog.options.target_box, "onnx")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dialog.options.output_edit.setText(str(out_dir / "r18.onnx"))
    dialog.options.export_button.click()
    assert dialog.pages.currentIndex() == 1
    qtbot.wait(1500)
    dialog.cancel()
    assert dialog.pages.currentIndex() == 0 and dialog.process is None
    assert os.listdir(out_dir) == []


def test_dangerous_file_model_is_not_offered(qtbot, window, payload_files, marker):
    dialog = dialog_for(qtbot, window, payload_files["torch-zip"])
    choose(dialog.options.target_box, "torchscript")
    own = dialog.options.model_group.model_box.findData("own")
    assert own < 0 or not dialog.options.model_group.model_box.model().item(own).isEnabled()
    assert not marker.exists()


def test_result_page_shows_key_counts(qtbot, window, tensors_file, tmp_path):
    dialog = dialog_for(qtbot, window, tensors_file[0])
    choose(dialog.options.target_box, "safetensors")
    dialog.options.exclude_edit.setText("^z$")
    dialog.options.rename_from.setText("^x$")
    dialog.options.rename_to.setText("renamed_x")
    dialog.options.output_edit.setText(str(tmp_path / "counts.safetensors"))
    dialog.options.export_button.click()
    text = wait_result(qtbot, dialog, 60_000)
    assert "Exported and verified" in text, text
    assert "2 from (whole file), 1 left out, 1 renamed" in text, text


def test_result_page_for_a_failed_dynamic_batch_and_nothing_written(qtbot, window,
                                                                    tensors_file, tmp_path):
    dialog = dialog_for(qtbot, window, tensors_file[0])
    figures = {
        "event": "result", "target": "onnx", "model": "Fixed", "input_shape": [1, 4],
        "input_dtype": "float32", "tolerance": 1e-4, "rtol": 1e-5, "path":
        str(tensors_file[0]), "bytes": 1000, "max_abs_diff": 0.0, "dynamic_batch": True,
        "dynamic_batch_checked": False, "dynamic_batch_size": 2, "onnxruntime": "1.0",
        "checker": True, "opset": 20, "passed": False, "verified": True, "written": False,
        "status": "failed",
        "problems": ["the batch dimension is fixed at 2 in the ONNX graph"]}
    dialog.result = ExportResult.from_json(figures)
    dialog.show_result(1, "")
    text = dialog.result_view.toPlainText()
    assert "nothing was written" in text
    assert "Dynamic batch" in text and "batch 1 and 2: failed" in text
    assert "the batch dimension is fixed at 2" in text
    assert not dialog.open_button.isEnabled()  # the file there is not the export
    figures.update(passed=False, verified=False, written=True, status="not verified",
                   problems=[], dynamic_batch=False,
                   onnxruntime="not installed: the model was not run")
    dialog.result = ExportResult.from_json(figures)
    dialog.show_result(1, "")
    text = dialog.result_view.toPlainText()
    assert "Exported, not verified" in text and "the model was not run" in text


def test_request_round_trips_through_the_command_line(qtbot, window, training_ckpt, tmp_path):
    """The dialog's request, as argv, parses back into the same request."""
    from ckpt_inspector.cli import _parser

    dialog = dialog_for(qtbot, window, training_ckpt[0])
    choose(dialog.options.target_box, "safetensors")
    choose(dialog.options.dtype_box, "bfloat16")
    dialog.options.strip_edit.setText("module., model.")
    dialog.options.rename_from.setText("^0")
    dialog.options.rename_to.setText("first")
    dialog.options.metadata_edit.setText("a=1; b=x=y")
    dialog.options.output_edit.setText(str(tmp_path / "out.safetensors"))
    request = dialog.options.request()
    args = _parser().parse_args(request.to_argv())
    assert ExportRequest.from_args(args) == request
    choose(dialog.options.target_box, "onnx")
    choose(dialog.options.model_group.model_box, "torchvision")
    dialog.options.model_group.dynamic_box.setChecked(True)
    dialog.options.model_group.opset_spin.setValue(17)
    dialog.options.model_group.shape_edit.setText("2x3x32x32")
    request = dialog.options.request()
    assert request.input_shape == (2, 3, 32, 32) and request.opset == 17
    args = _parser().parse_args(request.to_argv())
    assert ExportRequest.from_args(args) == request


def test_result_json_round_trip_and_text_report():
    figures = {"target": "safetensors", "source": "(whole file)", "tensors": 2, "excluded": 1,
               "renamed": 0, "not_cast": 0, "tensor_bytes": 48, "path": "/x.safetensors",
               "bytes": 200, "verified": True, "bit_exact": 2, "cast": 0,
               "max_abs_diff": 0.0, "problems": [], "passed": True, "written": True,
               "status": "passed"}
    result = ExportResult.from_json({"event": "result", **figures})
    assert result.to_json() == figures and list(result.to_json()) == list(figures)
    assert result.text().splitlines()[1:] == ["  2 tensors from the whole file, 1 left out",
                                              "  read back: 2 bit-exact", "verification PASSED"]


def test_a_failed_architecture_detection_is_said(qtbot, window, tensors_file):
    """``arch --json`` answers a failure with {"error", "exit_code"}: the dialog says it."""
    dialog = dialog_for(qtbot, window, tensors_file[0])
    choose(dialog.options.target_box, "torchscript")
    model = dialog.options.model_group
    model.detect_arch("no.such.part", [])
    qtbot.waitUntil(lambda: model.detect_button.isEnabled(), timeout=120_000)
    assert model.arch_label.text().startswith("Detection failed: ")
    assert "no part of the file is called 'no.such.part'" in model.arch_label.text()


def test_save_as_follows_the_format_keeping_folder_and_stem(qtbot, window, tensors_file,
                                                            tmp_path):
    """Switching the target renames the output for it: an untouched suggestion becomes the
    new target's suggestion, a name the user chose keeps its folder and stem."""
    dialog = dialog_for(qtbot, window, tensors_file[0])
    options = dialog.options
    choose(options.target_box, "state_dict")
    folder = os.path.dirname(str(tensors_file[0]))
    assert options.output_edit.text() == os.path.join(folder, "tensors_state_dict.pt")
    choose(options.target_box, "safetensors")  # the suggestion, untouched
    assert options.output_edit.text() == os.path.join(folder, "tensors.safetensors")
    mine = tmp_path / "elsewhere"
    choose(options.target_box, "state_dict")
    options.output_edit.setText(str(mine / "demo_sd.pt"))  # as after Export another
    for target, name in (("safetensors", "demo_sd.safetensors"), ("onnx", "demo_sd.onnx"),
                         ("torchscript", "demo_sd.pt"), ("pt2", "demo_sd.pt2"),
                         ("hf-sharded", "demo_sd"), ("state_dict", "demo_sd.pt")):
        choose(options.target_box, target)
        assert options.output_edit.text() == str(mine / name), target
    options.output_edit.setText(str(mine / "weights.pth"))  # a .pth state_dict stays .pth
    choose(options.target_box, "torchscript")
    assert options.output_edit.text() == str(mine / "weights.pth")
    options.output_edit.setText(str(tmp_path / "tensors_state_dict.pt"))  # another folder
    choose(options.target_box, "onnx")
    assert options.output_edit.text() == str(tmp_path / "tensors.onnx")


def test_a_name_of_another_format_is_warned_about(qtbot, window, tensors_file, tmp_path,
                                                  monkeypatch):
    dialog = dialog_for(qtbot, window, tensors_file[0])
    choose(dialog.options.target_box, "safetensors")
    out = tmp_path / "x.pt"
    dialog.options.output_edit.setText(str(out))
    asked = []
    monkeypatch.setattr(dialog, "ask_mismatch", lambda text: asked.append(text) or False)
    dialog.options.export_button.click()
    assert dialog.process is None and not out.exists()
    [text] = asked
    assert "x.pt" in text and "safetensors" in text and ".safetensors" in text
    # a name that fits is not asked about
    dialog.options.output_edit.setText(str(tmp_path / "x.safetensors"))
    dialog.options.export_button.click()
    assert len(asked) == 1 and dialog.process is not None
    wait_result(qtbot, dialog)


def test_model_options_fit_a_small_screen_and_show_what_trust_imports(qtbot, window,
                                                                     resnet_full):
    """At 1024×700 the model options once squeezed every field to a sliver and cut the
    consent's list of imports at the dialog's edge: now they scroll, whole, and the list
    wraps below the box."""
    dialog = dialog_for(qtbot, window, resnet_full[0])
    dialog.resize(1000, 650)
    dialog.show()
    options = dialog.options
    choose(options.target_box, "onnx")
    model = options.model_group
    assert model.kind == "own"
    qtbot.waitUntil(lambda: model.trust_imports.isVisible())
    text = model.trust_imports.text()
    assert "torchvision.models.resnet.ResNet" in text and model.trust_imports.wordWrap()
    assert "ResNet" in model.trust_imports.toolTip()
    from PySide6.QtWidgets import QScrollArea

    area = options.findChild(QScrollArea, "optionsScroll")
    inner = area.widget()
    qtbot.waitUntil(lambda: area.viewport().width() >= inner.minimumSizeHint().width())
    for field in (model.shape_edit, model.tolerance, model.input_dtype):
        assert field.height() >= field.minimumSizeHint().height(), field
    assert model.tolerance.text() == "0.0001"
