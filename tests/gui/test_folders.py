"""A checkpoint made of many files in the window: File > Open Folder, a dropped folder, the
Files dock's checkpoint folders."""

from __future__ import annotations

import os

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
