"""The desktop app, offscreen: opening files every way, the tree, filter, devices, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PySide6.QtCore import QMimeData, QModelIndex, QPoint, QPointF, Qt, QTimer
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QGuiApplication
from PySide6.QtWidgets import QApplication, QFileDialog, QLineEdit, QMessageBox

from ckpt_inspector.core.display import build_display_tree
from ckpt_inspector.core.formats import open_checkpoint
from ckpt_inspector.gui import main_window as main_window_mod
from ckpt_inspector.gui.dropping import drop_urls
from ckpt_inspector.gui.tree.checkpoint_view import CheckpointView
from ckpt_inspector.gui.tree.model import (
    DEVICE,
    ELEMENTS,
    KEY,
    SHAPE,
    SIZE,
    CheckpointModel,
    NodeRole,
)

from support import ROOT, find_row, open_and_wait


def visible_keys(view: CheckpointView) -> list[str]:
    """Full keys of every leaf the proxy shows."""
    proxy = view.proxy
    out = []
    stack = [QModelIndex()]
    while stack:
        parent = stack.pop()
        for row in range(proxy.rowCount(parent)):
            index = proxy.index(row, 0, parent)
            if proxy.rowCount(index):
                stack.append(index)
            else:
                out.append(index.data(NodeRole).key)
    return out


def test_open_by_path_shows_module_tree_and_summary(qtbot, window, training_ckpt):
    path, _ = training_ckpt
    view = open_and_wait(qtbot, window, path)
    assert window.tabs.count() == 1 and window.pages.currentWidget() is window.tabs
    assert window.tabs.tabText(0) == "model.ckpt"
    # dotted keys are grouped: model_state_dict > 0 > weight
    weight = find_row(view, "model_state_dict.0.weight")
    assert weight.data() == "weight"
    assert weight.parent().data() == "0"
    assert weight.parent().parent().data() == "model_state_dict"
    epoch = find_row(view, "epoch")
    assert epoch.siblingAtColumn(SHAPE).data() == "7"
    summary = view.summary.toPlainText()
    assert "SAFE" in summary and "epoch" in summary and "float32" in summary
    assert not view.banner.isVisible()


def test_group_toggle_shows_flat_keys(qtbot, window, training_ckpt):
    view = open_and_wait(qtbot, window, training_ckpt[0])
    view.group_box.setChecked(False)
    assert find_row(view, "model_state_dict.0.weight").data() == "0.weight"
    view.group_box.setChecked(True)
    assert find_row(view, "model_state_dict.0.weight").data() == "weight"


def test_open_by_dialog(qtbot, window, tensors_file, monkeypatch):
    """The real dialog, answered as a user would: pick the file, accept."""
    folder = os.path.dirname(str(tensors_file[0]))
    window.browser.set_folder(folder)

    seen = {}

    def answer():
        dialog = window.findChild(QFileDialog)
        if dialog is None or not dialog.isVisible():
            QTimer.singleShot(100, answer)
            return
        seen["folder"] = dialog.directory().absolutePath()
        # type the file name, as a user would
        dialog.findChild(QLineEdit, "fileNameEdit").setText(os.path.basename(
            str(tensors_file[0])))
        dialog.accept()

    QTimer.singleShot(100, answer)
    with qtbot.waitSignal(window.file_shown, timeout=30_000):
        window.open_action.trigger()
    assert seen["folder"] == folder  # the dialog starts in the Files dock's folder
    assert window.tabs.count() == 1
    assert window.current_view().path == str(tensors_file[0])


def drop(window, paths):
    """What the window receives when files are dragged onto it: DragEnter, then Drop."""
    mime = QMimeData()
    mime.setUrls(drop_urls([str(p) for p in paths]))
    enter = QDragEnterEvent(QPoint(50, 50), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    assert enter.isAccepted()
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    assert QApplication.sendEvent(window, event)


def test_drop_opens_each_file_in_its_own_tab(qtbot, window, tensors_file, resnet_params):
    shown = []
    window.file_shown.connect(shown.append)
    drop(window, [tensors_file[0], resnet_params[0]])
    qtbot.waitUntil(lambda: len(shown) == 2, timeout=60_000)
    assert window.tabs.count() == 2
    assert {window.tabs.tabText(i) for i in range(2)} == {"tensors.pt", "resnet18_params.pth"}
    drop(window, [tensors_file[0]])  # an open file is not opened twice
    assert window.tabs.count() == 2


def test_file_browser_double_click_opens(qtbot, window, tensors_file):
    path = str(tensors_file[0])
    window.browser.set_folder(os.path.dirname(path))
    model = window.browser.model
    qtbot.waitUntil(lambda: model.index(path).isValid() and model.rowCount(
        model.index(os.path.dirname(path))) > 0, timeout=10_000)
    with qtbot.waitSignal(window.file_shown, timeout=30_000):
        window.browser.view.activated.emit(model.index(path))  # what a double-click emits
    assert window.current_view().path == path
    assert window.settings.value("lastFolder") == os.path.dirname(path)


def test_filter_syntax(qtbot, window, resnet_params):
    view = open_and_wait(qtbot, window, resnet_params[0])

    def apply(text):
        view.filter_edit.setText(text)
        view.apply_filter()
        return sorted(visible_keys(view))

    assert apply("shape:64x3x7x7") == ["conv1.weight"]
    assert apply("dtype:int64") == sorted(k for k in resnet_params[1]
                                          if k.endswith("num_batches_tracked"))
    assert apply("re:^layer4\\.1\\..*conv2") == ["layer4.1.conv2.weight"]
    assert apply("fc.") == ["fc.bias", "fc.weight"]
    assert apply("FC. shape:1000") == ["fc.bias"]
    assert apply("re:([") == ["fc.bias"]  # an invalid pattern keeps the last good result
    assert "invalid" in view.match_label.text()
    assert len(apply("")) == len(resnet_params[1])


def test_filter_finds_every_3x3_kernel_and_its_help_says_how(qtbot, window, resnet_params):
    view = open_and_wait(qtbot, window, resnet_params[0])
    view.filter_edit.setText("shape:**x3x3")
    view.apply_filter()
    kernels = sorted(k for k, t in resnet_params[1].items() if tuple(t.shape[-2:]) == (3, 3))
    assert len(kernels) == 16 and sorted(visible_keys(view)) == kernels
    for help_text in (view.filter_edit.toolTip(), view.filter_help.toolTip()):
        assert "shape:**x3x3" in help_text


def test_filter_is_debounced(qtbot, window, resnet_params):
    view = open_and_wait(qtbot, window, resnet_params[0])
    qtbot.keyClicks(view.filter_edit, "bn1.running")
    assert len(visible_keys(view)) == len(resnet_params[1])  # not yet applied
    qtbot.waitUntil(lambda: len(visible_keys(view)) < len(resnet_params[1]), timeout=3000)
    assert all("bn1.running" in k for k in visible_keys(view))


def test_sorting_by_size(qtbot, window, resnet_params):
    view = open_and_wait(qtbot, window, resnet_params[0])
    view.group_box.setChecked(False)
    view.tree.sortByColumn(4, Qt.SortOrder.DescendingOrder)
    first = view.proxy.index(0, 0, QModelIndex()).data(NodeRole)
    assert first.key in ("layer4.0.conv2.weight", "layer4.1.conv1.weight",
                         "layer4.1.conv2.weight")
    view.tree.sortByColumn(-1, Qt.SortOrder.AscendingOrder)
    assert view.proxy.index(0, 0, QModelIndex()).data(NodeRole).key == "conv1.weight"


def test_copy_key_and_shape(qtbot, window, resnet_params):
    view = open_and_wait(qtbot, window, resnet_params[0])
    index = find_row(view, "conv1.weight")
    view.tree.setCurrentIndex(index)
    view.copy_keys()
    assert QGuiApplication.clipboard().text() == "conv1.weight"
    view.copy_shapes()
    assert QGuiApplication.clipboard().text() == "[64, 3, 7, 7]"
    assert "64, 3, 7, 7" in view.details.toPlainText()


def test_device_picker_and_saved_location(qtbot, window, cuda_file, settings):
    view = open_and_wait(qtbot, window, cuda_file[0])
    window._devices_found([{"id": "cpu", "label": "cpu"},
                           {"id": "cuda:0", "label": "cuda:0 — Test GPU"}])
    index = find_row(view, "0.weight")
    assert index.siblingAtColumn(DEVICE).data() == "cuda:0 → cpu"
    window.device_box.setCurrentIndex(window.device_box.findData("cuda:0"))
    assert index.siblingAtColumn(DEVICE).data() == "cuda:0"
    assert settings.value("device") == "cuda:0"
    window.device_box.setCurrentIndex(0)
    assert index.siblingAtColumn(DEVICE).data() == "cuda:0 → cpu"
    assert window.device == "cpu"


def test_saved_device_that_is_missing_falls_back_to_cpu(qtbot, settings):
    from ckpt_inspector.gui.main_window import MainWindow

    settings.setValue("device", "cuda:3")
    win = MainWindow(settings=settings, probe_devices=False)
    qtbot.addWidget(win)
    win._devices_found([{"id": "cpu", "label": "cpu"}])
    assert win.device == "cpu"
    win.close()


def test_real_device_probe(qtbot, settings):
    """The probe runs ``ckpt-inspector devices`` as a child process; cpu is always there."""
    from ckpt_inspector.gui.main_window import MainWindow

    win = MainWindow(settings=settings, probe_devices=False)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.probe.found, timeout=120_000) as blocker:
        win.probe.start()
    assert blocker.args[0][0]["id"] == "cpu"
    assert win.device_box.findData("cpu") >= 0
    win.close()


def test_broken_file_shows_an_error_dialog(qtbot, window, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    [view] = window.open_paths([str(bad)])
    qtbot.waitUntil(lambda: window.reporter.last is not None and
                    window.reporter.last.isVisible(), timeout=30_000)
    box = window.reporter.last
    assert "broken.pt" in box.text() and "zip" in box.text()
    assert box.detailedText()
    assert "could not be read" in window.tabs.tabToolTip(0)
    assert not window.tabs.tabIcon(0).isNull()
    assert "Could not read" in view.status.text()
    box.close()


def test_malicious_file_is_flagged_and_never_loaded(qtbot, window, payload_files, marker,
                                                    monkeypatch):
    view = open_and_wait(qtbot, window, payload_files["torch-zip"])
    assert view.banner.isVisible()
    assert "Dangerous" in view.banner.text() and "posix.system" in view.banner.text()
    assert "dangerous" in window.tabs.tabToolTip(0) and not window.tabs.tabIcon(0).isNull()
    hook = find_row(view, "evil")
    assert hook.siblingAtColumn(1).data() == "posix.system"
    assert hook.data(Qt.ItemDataRole.ForegroundRole) is not None
    asked = []

    def decline(title, text, accept):
        asked.append((title, text))
        return False

    monkeypatch.setattr(window, "confirm", decline)
    qtbot.waitUntil(lambda: not window.runner.tasks, timeout=10_000)  # the read's end
    window.load_current_with_torch()
    assert asked and asked[0][0] == "Dangerous file" and "posix.system" in asked[0][1]
    assert not window.runner.tasks  # declined: nothing was started
    assert not marker.exists()


def test_needs_trust_banner(qtbot, window, resnet_full):
    view = open_and_wait(qtbot, window, resnet_full[0])
    assert view.banner.isVisible() and "Needs trust" in view.banner.text()
    assert "torchvision.models.resnet.ResNet" in view.banner.text()
    assert find_row(view, "layer1.0.conv1.weight").data() == "weight"


def test_load_torchvision_model_after_confirming(qtbot, window, resnet_full, monkeypatch):
    open_and_wait(qtbot, window, resnet_full[0])
    asked = []
    monkeypatch.setattr(window, "confirm", lambda t, text, a: asked.append(text) or True)
    window.load_current_with_torch()
    assert "torchvision.models.resnet.ResNet" in asked[0]
    qtbot.waitUntil(lambda: window.reporter.last is not None
                    and "Loaded" in window.reporter.last.windowTitle(), timeout=120_000)
    assert "allowed classes" in window.reporter.last.text()
    window.reporter.last.close()


def test_load_with_torch_on_a_safe_file(qtbot, window, tensors_file):
    open_and_wait(qtbot, window, tensors_file[0])
    window.load_current_with_torch()
    qtbot.waitUntil(lambda: window.reporter.last is not None
                    and "Loaded" in window.reporter.last.windowTitle(), timeout=120_000)
    assert "3 tensors" in window.reporter.last.text()
    window.reporter.last.close()


def test_stale_results_are_dropped(qtbot, window, tensors_file, resnet_params):
    view = open_and_wait(qtbot, window, tensors_file[0])
    from ckpt_inspector.core.ops.session import load_file

    other = load_file(str(resnet_params[0]))
    view.start_loading()  # generation 2
    view._loaded(other, 1)  # an answer to the first request arrives late
    qtbot.waitSignal(view.loaded, timeout=30_000).wait()
    assert view.file.path == str(tensors_file[0])


def test_cancel_drops_the_result(qtbot, window, resnet_full):
    [view] = window.open_paths([str(resnet_full[0])])
    assert window.cancel_button.isVisibleTo(window)
    window.cancel_button.click()
    assert not window.runner.tasks
    qtbot.wait(300)
    assert view.file is None


def test_closing_a_tab_frees_its_trees_between_events(qtbot, window, resnet_full):
    """Closing returns at once; the trees are broken up in slices on the event loop."""
    from ckpt_inspector.gui import release

    view = open_and_wait(qtbot, window, resnet_full[0])
    file = view.file
    assert file.grouped.children and file.ckpt.root.children
    window.close_tab(0)
    assert release.pending() == 1
    qtbot.waitUntil(lambda: release.pending() == 0, timeout=30_000)
    assert file.grouped.children == [] and file.ckpt.root.children == []


def test_recent_files_persist(qtbot, window, tensors_file, settings):
    open_and_wait(qtbot, window, tensors_file[0])
    assert window.recent_files()[0] == str(tensors_file[0])
    window.close_tab(0)
    assert window.pages.currentWidget() is window.welcome
    assert "tensors.pt" in window.welcome.recent.text()
    window._refresh_recent()
    assert any(a.text() == str(tensors_file[0]) for a in window.recent_menu.actions())


def test_demo_button(qtbot, window, training_ckpt, monkeypatch):
    monkeypatch.setattr(main_window_mod, "make_demo", lambda: str(training_ckpt[0]))
    with qtbot.waitSignal(window.file_shown, timeout=30_000):
        window.welcome.demo_button.click()
    assert window.current_view().path == str(training_ckpt[0])


@pytest.mark.parametrize("grouped", [True, False])
def test_model_passes_qtmodeltester(qtmodeltester, training_ckpt, grouped):
    ckpt = open_checkpoint(training_ckpt[0])
    model = CheckpointModel(build_display_tree(ckpt.root, grouped=grouped))
    qtmodeltester.check(model, force_py=True)
    model.sort(KEY, Qt.SortOrder.DescendingOrder)
    qtmodeltester.check(model, force_py=True)


def test_a_key_that_other_keys_extend_is_one_row(qtmodeltester, torch, tmp_path, window,
                                                 qtbot):
    """Keys ``x`` and ``x.y`` (issue 13): one row ``x``, a tensor with ``y`` below it."""
    path = tmp_path / "xy.pt"
    torch.save({"x": torch.zeros(2), "x.y": torch.ones(3)}, path)
    model = CheckpointModel(build_display_tree(open_checkpoint(path).root))
    qtmodeltester.check(model, force_py=True)
    assert model.rowCount() == 1
    x = model.index(0, KEY)
    assert x.data() == "x" and model.rowCount(x) == 1
    assert model.index(0, KEY, x).data() == "y"
    assert model.index(0, SHAPE).data() == "[2]"
    # the row's columns are its tensor's own; the totals with the keys below in its tooltip
    assert model.index(0, ELEMENTS).data() == "2" and model.index(0, SIZE).data() == "8 B"
    assert "with the keys under it: 2 tensors, 5 elements" in \
        model.index(0, KEY).data(Qt.ItemDataRole.ToolTipRole)
    view = open_and_wait(qtbot, window, path)
    assert view.select_key("x.y") and view.current_node().key == "x.y"


def test_find_shortcut_focuses_filter(qtbot, window, tensors_file):
    view = open_and_wait(qtbot, window, tensors_file[0])
    window.find_action.trigger()
    qtbot.waitUntil(view.filter_edit.hasFocus, timeout=2000)


def test_error_box_is_a_message_box(qtbot, window):
    box = window.reporter.show("t", "m", "d")
    assert isinstance(box, QMessageBox) and box.detailedText() == "d"
    box.close()


def test_real_app_starts_and_quits(tensors_file, tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "CKPT_INSPECTOR_EXIT_WHEN_SHOWN": "1",
           "XDG_CONFIG_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "ckpt_inspector", str(tensors_file[0])],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("shown ")
    assert "Traceback" not in proc.stderr


def test_cancel_offers_to_read_again(qtbot, window, resnet_full):
    [view] = window.open_paths([str(resnet_full[0])])
    window.cancel_button.click()
    assert "cancelled" in view.status.text() and view.retry_button.isVisibleTo(view)
    with qtbot.waitSignal(window.file_shown, timeout=30_000):
        view.retry_button.click()
    assert view.file is not None


def test_regex_anchors_at_key_segments(qtbot, window, training_ckpt):
    view = open_and_wait(qtbot, window, training_ckpt[0])
    view.filter_edit.setText("re:^4\\.(weight|bias)$")
    view.apply_filter()
    assert sorted(visible_keys(view)) == ["model_state_dict.4.bias", "model_state_dict.4.weight"]
    view.filter_edit.setText("re:^nothing-like-this")
    view.apply_filter()
    assert "no match" in view.match_label.text()


def test_grouping_toggle_keeps_sort_and_selection(qtbot, window, resnet_params):
    view = open_and_wait(qtbot, window, resnet_params[0])
    view.tree.sortByColumn(4, Qt.SortOrder.DescendingOrder)
    assert view.select_key("fc.weight")
    view.group_box.setChecked(False)
    assert view.current_node().key == "fc.weight"
    assert view.tree.header().sortIndicatorSection() == 4
    first = view.proxy.index(0, 0, QModelIndex()).data(NodeRole)
    assert first.key.startswith("layer4")  # still largest first


def test_filter_then_clear_restores_expansion(qtbot, window, resnet_params):
    view = open_and_wait(qtbot, window, resnet_params[0])
    view.tree.collapseAll()
    view.tree.expand(find_row(view, "layer2"))
    view.filter_edit.setText("fc.")
    view.apply_filter()
    view.filter_edit.setText("")
    view.apply_filter()
    assert view.tree.isExpanded(find_row(view, "layer2"))
    assert not view.tree.isExpanded(find_row(view, "layer3"))


def test_failed_files_are_not_recent_and_actions_follow_the_tab(qtbot, window, tmp_path):
    assert not window.torch_action.isEnabled()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04garbage")
    window.open_paths([str(bad)])
    qtbot.waitUntil(lambda: window.reporter.last is not None, timeout=30_000)
    assert str(bad) not in window.recent_files()
    assert not window.torch_action.isEnabled()
    window.reporter.last.close()


def test_errors_of_several_files_share_one_dialog(qtbot, window, tmp_path):
    paths = []
    for name in ("one.pt", "two.pt"):
        path = tmp_path / name
        path.write_bytes(b"PK\x03\x04 broken")
        paths.append(str(path))
    window.open_paths(paths)
    qtbot.waitUntil(lambda: window.reporter.last is not None
                    and "two.pt" in window.reporter.last.text()
                    and "one.pt" in window.reporter.last.text(), timeout=30_000)
    assert "truncated" in window.reporter.last.text()
    assert len([w for w in window.findChildren(QMessageBox) if w.isVisible()]) == 1
    window.reporter.last.close()


def test_typing_a_file_path_in_the_files_dock_opens_it(qtbot, window, tensors_file):
    window.browser.path_edit.setText(str(tensors_file[0]))
    with qtbot.waitSignal(window.file_shown, timeout=30_000):
        window.browser.path_edit.returnPressed.emit()
    assert window.browser.folder == os.path.dirname(str(tensors_file[0]))
