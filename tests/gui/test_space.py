"""What the window does with its space and its dialogs: panels that say something useful
before a selection, controls shown only where they act, dialogs out of the way of what
they open."""

from __future__ import annotations

from ckpt_inspector.core.ops.export.result import ExportResult

from support import open_and_wait


def test_open_exported_file_closes_the_dialog_before_the_tab_opens(qtbot, window,
                                                                    tensors_file,
                                                                    training_ckpt):
    open_and_wait(qtbot, window, tensors_file[0])
    dialog = window.export_current()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(dialog.isVisible, timeout=5000)
    dialog.result = ExportResult("safetensors", str(training_ckpt[0]), bytes=1, written=True,
                                 passed=True, status="passed", source="model", tensors=3,
                                 bit_exact=3)
    dialog.show_result(0, "")
    assert dialog.open_button.isEnabled()
    seen = []
    window.tabs.currentChanged.connect(lambda _i: seen.append(dialog.isVisible()))
    with qtbot.waitSignal(window.file_shown, timeout=30_000):
        dialog.open_button.click()
    assert seen and not any(seen)  # the new tab became current with the dialog gone
    assert window.current_view().path == str(training_ckpt[0])
    assert not dialog.isVisible()


def test_the_export_preview_keeps_the_ends_of_keys(qtbot, window, resnet_params):
    from PySide6.QtCore import Qt

    open_and_wait(qtbot, window, resnet_params[0])
    dialog = window.export_current()
    qtbot.addWidget(dialog)
    options = dialog.options
    options.update_preview()
    table = options.preview
    # running_mean and running_var differ at their ends: cut in the middle, whole in a tip
    assert table.textElideMode() == Qt.TextElideMode.ElideMiddle
    keys = [table.item(r, 0).text() for r in range(table.rowCount())]
    assert "layer1.0.bn1.num_batches_tracked" in keys
    for r in range(table.rowCount()):
        for c in range(3):
            assert table.item(r, c).toolTip() == table.item(r, c).text()
    # the preview has at least the room the options have
    assert table.width() >= options.keys_group.width() - 10
    dialog.reject()


def test_narrow_key_columns_keep_the_ends_of_keys_and_shapes(qtbot, window, resnet_params):
    """At 1024 pixels the flat tree cannot show layer4.0.downsample.1.running_mean whole:
    its distinct end stays, as the kernel size of [512, 512, 3, 3] does."""
    from PySide6.QtCore import Qt

    view = open_and_wait(qtbot, window, resnet_params[0])
    assert view.tree.textElideMode() == Qt.TextElideMode.ElideMiddle


def test_before_a_selection_the_lower_half_shows_where_the_bytes_are(qtbot, window,
                                                                     training_ckpt):
    from PySide6.QtCore import QUrl

    from ckpt_inspector.gui.html.overview import key_href

    view = open_and_wait(qtbot, window, training_ckpt[0])
    tv = view.tensor_view
    assert tv.pages.currentWidget() is tv.overview
    text = tv.overview.toPlainText().replace("\u200b", "")
    sd = training_ckpt[1]["model_state_dict"]
    biggest = max(sd, key=lambda k: sd[k].numel() * sd[k].element_size())
    assert "Largest tensors" in text and f"model_state_dict.{biggest}" in text
    assert "shape:**x3x3" in text  # what one can do next
    # a link selects its tensor, and the tensor's figures replace the overview
    tv.overview.anchorClicked.emit(QUrl(key_href(f"model_state_dict.{biggest}")))
    assert view.current_node().key == f"model_state_dict.{biggest}"
    assert tv.pages.currentWidget() is tv.tabs
    # a group: its own largest tensors, without the hints
    assert view.select_key("model_state_dict")
    assert tv.pages.currentWidget() is tv.overview
    text = tv.overview.toPlainText().replace("\u200b", "")
    assert text.startswith("model_state_dict") and biggest in text and "shape:**" not in text


def test_the_largest_tensors_are_found_without_visiting_every_row(training_ckpt, torch):
    from ckpt_inspector.core.ops.session import load_file
    from ckpt_inspector.gui.html.overview import largest_tensors

    file = load_file(str(training_ckpt[0]))
    for grouped in (True, False):
        top = file.tree(grouped)
        tensors = [d for d in top.walk() if d.is_tensor]
        want = sorted((d.node.tensor.nbytes for d in tensors), reverse=True)[:5]
        got = largest_tensors(top, 5)
        assert [d.node.tensor.nbytes for d in got] == want
        assert all(d.is_tensor for d in got)


def test_the_export_result_page_fits_its_lines_and_gives_the_command(qtbot, window,
                                                                      tensors_file, tmp_path):
    import shlex

    open_and_wait(qtbot, window, tensors_file[0])
    dialog = window.export_current()
    qtbot.addWidget(dialog)
    qtbot.waitUntil(dialog.isVisible, timeout=5000)
    options_size = dialog.size()
    options = dialog.options
    options.target_box.setCurrentIndex(options.target_box.findData("safetensors"))
    out = tmp_path / "t.safetensors"
    options.output_edit.setText(str(out))
    options.export_button.click()
    qtbot.waitUntil(lambda: dialog.pages.currentIndex() == 2, timeout=180_000)
    assert "Exported and verified" in dialog.result_view.toPlainText()
    qtbot.wait(50)
    # no blank area under the figures: the text is as tall as its lines, the dialog too
    doc = dialog.result_view.document()
    assert dialog.result_view.height() <= doc.size().height() + 40
    assert dialog.height() < options_size.height() * 0.75, (dialog.height(), options_size)
    argv = shlex.split(dialog.command_edit.text())
    assert argv[0] == "ckpt-inspector" and argv[1:] == dialog.request.to_argv()
    assert argv[argv.index("-o") + 1] == str(out)
    [back] = [b for b in dialog.findChildren(type(dialog.open_button))
              if b.text() == "Export another"]
    back.click()
    assert dialog.pages.currentIndex() == 0
    assert dialog.size() == options_size
    dialog.reject()


def test_the_overview_stacks_its_parts_in_a_narrow_panel(qtbot, window, resnet_params):
    from ckpt_inspector.gui.html.overview import WIDE

    window.resize(1400, 860)
    view = open_and_wait(qtbot, window, resnet_params[0])
    tv = view.tensor_view
    qtbot.waitUntil(lambda: tv.width() >= WIDE, timeout=5000)
    side_by_side = "width='55%'"
    assert tv._overview_wide and side_by_side in tv._overview(True)
    window.resize(900, 700)
    qtbot.waitUntil(lambda: not tv._overview_wide, timeout=5000)
    assert side_by_side not in tv._overview(False)
    assert "Largest tensors" in tv.overview.toPlainText()


def test_the_wide_overview_never_breaks_a_cell_inside_a_word(qtbot, window, training_ckpt):
    """Side by side, the largest tensors' table keeps each cell on one line (its dtype and
    share columns once wrapped a letter a line, 'f / l / o / a / t')."""
    view = open_and_wait(qtbot, window, training_ckpt[0])
    tv = view.tensor_view
    window.resize(1600, 1000)
    tv.resize(900, 400)
    qtbot.waitUntil(lambda: tv._overview_wide, timeout=5000)
    doc = tv.overview.document()
    doc.setTextWidth(tv.overview.viewport().width())
    block, cells = doc.begin(), 0
    while block.isValid():
        text = block.text().strip()
        if text and (text.startswith("float") or text.endswith("%")):
            cells += 1
            assert block.layout().lineCount() == 1, text
        block = block.next()
    assert cells >= 4
