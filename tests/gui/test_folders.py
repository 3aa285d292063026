"""A checkpoint made of many files in the window: File > Open Folder, a dropped folder, the
Files dock's checkpoint folders."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt
from PySide6.QtGui import QTextDocument, QTextOption
from test_main_window import drop

from shards import save_sharded, state_dict
from support import open_and_wait


def _model(torch, tmp_path):
    folder = tmp_path / "sharded"
    weight_map = save_sharded(torch, folder, state_dict(torch), "safetensors")
    return folder, weight_map


def test_a_sharded_folder_opens_as_one_checkpoint(qtbot, window, torch, tmp_path):
    folder, weight_map = _model(torch, tmp_path)
    view = open_and_wait(qtbot, window, folder)
    assert window.tabs.tabText(window.tabs.currentIndex()) == "sharded"
    summary = view.summary.toPlainText()
    assert "hf-sharded" in summary and "Files (" in summary
    for shard in set(weight_map.values()):
        assert shard in summary.replace("\u200b", "")
    key = sorted(weight_map)[0]
    assert view.select_key(key)
    assert weight_map[key] in view.details.toPlainText()


def test_open_folder_action_and_a_dropped_folder(qtbot, window, torch, tmp_path, monkeypatch):
    folder, _ = _model(torch, tmp_path)
    from ckpt_inspector.gui import main_window

    monkeypatch.setattr(main_window, "ask_folder", lambda *a: str(folder))
    with qtbot.waitSignal(window.file_shown, timeout=60_000):
        window.open_folder_action.trigger()
    assert window.tabs.count() == 1
    drop(window, [folder])  # already open: not twice
    assert window.tabs.count() == 1


def test_a_dropped_plain_folder_is_browsed(qtbot, window, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    drop(window, [plain])
    assert window.tabs.count() == 0
    assert window.browser.folder == str(plain)


def test_the_files_dock_opens_a_checkpoint_folder(qtbot, window, torch, tmp_path):
    folder, _ = _model(torch, tmp_path)
    (tmp_path / "plain").mkdir()
    window.browser.set_folder(str(tmp_path))
    model = window.browser.model
    qtbot.waitUntil(lambda: model.index(str(folder)).isValid()
                    and model.rowCount(model.index(str(tmp_path))) >= 2, timeout=10_000)
    assert model.is_checkpoint(str(folder)) and not model.is_checkpoint(str(tmp_path / "plain"))
    assert "double-click opens it" in model.index(str(folder)).data(3)  # ToolTipRole
    with qtbot.waitSignal(window.file_shown, timeout=60_000):
        window.browser._activated(model.index(str(folder)))
    assert os.path.basename(window.current_view().path) == "sharded"


def _plain_folder(torch, tmp_path):
    plain = tmp_path / "random"
    plain.mkdir()
    for name in ("foo.pt", "bar.pth"):
        torch.save({"w": torch.zeros(2)}, plain / name)
    return plain


def test_a_folder_in_no_layout_is_browsed_not_refused(qtbot, window, torch, tmp_path):
    """``ckpt-inspector some-folder`` (or File > Open Folder) on a folder of unrelated
    checkpoints: no error, no tab; the Files dock lists it (shown again if hidden) and the
    status bar says why."""
    plain = _plain_folder(torch, tmp_path)
    window.browser_dock.hide()
    assert window.open_paths([str(plain)]) == []
    assert window.tabs.count() == 0
    assert window.reporter.last is None  # no "Could not read" dialog
    assert window.browser.folder == str(plain)
    assert window.browser_dock.isVisible()
    assert "not a checkpoint" in window.statusBar().currentMessage()


def test_double_click_expands_a_plain_folder_in_the_files_dock(qtbot, window, torch, tmp_path):
    plain = _plain_folder(torch, tmp_path)
    window.browser.set_folder(str(tmp_path))
    view, model = window.browser.view, window.browser.model
    qtbot.waitUntil(lambda: model.index(str(plain)).isValid(), timeout=10_000)
    index = model.index(str(plain))
    view.scrollTo(index)
    pos = view.visualRect(index).center()
    assert not view.visualRect(index).isEmpty()
    qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)  # what a user's
    qtbot.mouseDClick(view.viewport(), Qt.MouseButton.LeftButton, pos=pos)  # double-click is
    qtbot.wait(50)
    assert view.isExpanded(index)
    assert window.tabs.count() == 0


def test_a_long_error_message_wraps_on_the_error_page(qtbot, window, tmp_path):
    """A message with a long name in it stays inside the tab (it may break after a _)."""
    from ckpt_inspector.core.errors import CheckpointError

    window.resize(1024, 700)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    [view] = window.open_paths([str(bad)])
    qtbot.waitUntil(lambda: view.retry_button.isVisible(), timeout=30_000)
    window.reporter.last.close()
    long_name = "_".join(f"layer{i}" for i in range(60))  # no space nor / to break at
    view._failed(CheckpointError(f"cannot read {long_name}.safetensors"),
                 view._generation)
    window.reporter.last.close()
    qtbot.wait(50)
    label = view.status
    assert label.geometry().right() <= view.message.width()
    doc = QTextDocument()
    doc.setDefaultFont(label.font())
    option = QTextOption()
    option.setWrapMode(QTextOption.WrapMode.WordWrap)  # as a QLabel wraps: never mid-word
    doc.setDefaultTextOption(option)
    doc.setHtml(label.text())
    doc.setTextWidth(label.width())
    assert doc.idealWidth() <= label.width()  # no line wider than the label: nothing cut


def test_a_missing_shard_shows_a_warning_bar_over_the_tree(qtbot, window, torch, tmp_path):
    folder, weight_map = _model(torch, tmp_path)
    lost = sorted(set(weight_map.values()))[1]
    (folder / lost).unlink()
    view = open_and_wait(qtbot, window, folder)
    bar = view.files_banner
    assert bar.isVisible()
    n = sum(1 for f in weight_map.values() if f == lost)
    text = bar.text()
    assert f"1 of {len(set(weight_map.values()))} files is missing" in text
    assert lost in text and f"{n} tensor" in text
    summary = view.summary.toPlainText().replace("\u200b", "")
    files = summary.split("Files (")[1].split("Warnings")[0]
    assert "missing" in files.split(lost)[1].split(".safetensors")[0]  # its format cell
    assert "None" not in summary


def test_no_warning_bar_when_every_file_is_read(qtbot, window, torch, tmp_path):
    folder, _ = _model(torch, tmp_path)
    view = open_and_wait(qtbot, window, folder)
    assert not view.files_banner.isVisible()


def test_config_json_is_a_table_of_its_top_level_keys(qtbot, window, torch, tmp_path):
    import json

    folder, _ = _model(torch, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): f"class number {i}" for i in range(500)}  # a long value
    (folder / "config.json").write_text(json.dumps(config))
    view = open_and_wait(qtbot, window, folder)
    summary = view.summary.toPlainText().replace("\u200b", "")
    assert f"config.json ({len(config)})" in summary
    lines = summary.splitlines()
    assert "hidden_size" in lines and "model_type" in lines
    assert '{"model_type"' not in summary  # not one raw JSON blob
    table = summary.split(f"config.json ({len(config)})")[1].splitlines()
    assert max(len(line) for line in table) < 120  # the long value is cut short


def test_reading_a_sharded_folder_says_which_file(qtbot, window, torch, tmp_path, monkeypatch):
    """A checkpoint of many files says how many are read (the tab and the status bar's
    bar), then each step, while it is read."""
    from ckpt_inspector.gui.tree.widgets import MessagePage

    folder, weight_map = _model(torch, tmp_path)
    shown, fractions = [], []
    real = MessagePage.show_message
    monkeypatch.setattr(MessagePage, "show_message",
                        lambda self, html, retry: shown.append(html) or real(self, html, retry))
    window.runner.changed.connect(
        lambda: fractions.extend(t.fraction for t in window.runner.tasks))
    open_and_wait(qtbot, window, folder)
    shards = sorted(set(weight_map.values()))
    n = len(shards)
    assert n > 1
    for k, shard in enumerate(shards):
        assert f"Reading <b>sharded</b>: {k} of {n} files read<br>{shard}" in shown, shown
    assert f"Reading <b>sharded</b>: {n} of {n} files read" in shown
    assert shown.index("Reading <b>sharded</b>: scanning…") < \
        shown.index("Reading <b>sharded</b>: building the tree…")
    assert any(f is not None and 0 < f < 1 for f in fractions), fractions
