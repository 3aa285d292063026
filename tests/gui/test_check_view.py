"""Tools > Check against a model… in the window, offscreen: the dialog (torchvision's names,
a builder, another open tab, the part of the file), the check run by ``ckpt-inspector
check --json`` in a child process, the key tree coloured by status as the comparison tab
colours it, the filters, the fix with its Copy button, errors and cancelling."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtWidgets import QApplication, QDialogButtonBox

from ckpt_inspector.core.ops.check.report import (
    MISMATCHED,
    MISSING,
    OK,
    UNEXPECTED,
    CheckReport,
    KeyRow,
    Spec,
)
from ckpt_inspector.core.ops.check.request import CheckRequest
from ckpt_inspector.core.ops.check.rows import build_tree
from ckpt_inspector.gui.check import launch
from ckpt_inspector.gui.check.model import CHECKPOINT, FILTERS, KEY, MODEL, STATUS, CheckModel
from ckpt_inspector.gui.check.view import CheckView
from ckpt_inspector.gui.dialogs.check import BUILDER, OTHER, builder_functions
from ckpt_inspector.gui.html.check import STATUS_STYLE, status_color
from ckpt_inspector.gui.tree.model import NodeRole

from support import TinyNet, open_and_wait

WAIT = 120_000  # a child that imports torch and torchvision on a busy machine


@pytest.fixture()
def files(tmp_path, torch):
    """A small net's state_dict as DataParallel saves it, and the same without the prefix
    and with a head of another size."""
    net = TinyNet.make(torch)
    sd = net.state_dict()
    dp = OrderedDict(("module." + k, v) for k, v in sd.items())
    other = OrderedDict(sd)
    other["4.weight"] = torch.zeros(3, 8 * 6 * 6)
    other["4.bias"] = torch.zeros(3)
    torch.save(dp, tmp_path / "dp.pt")
    torch.save(other, tmp_path / "other.pt")
    (tmp_path / "tinynet.py").write_text(
        "import torch\n"
        "def _helper():\n    pass\n"
        "def make_tiny():\n"
        "    return torch.nn.Sequential(\n"
        "        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),\n"
        "        torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))\n")
    return tmp_path


def rows_by_key(view: CheckView) -> dict[str, QModelIndex]:
    out = {}
    stack = [QModelIndex()]
    while stack:
        parent = stack.pop()
        for row in range(view.proxy.rowCount(parent)):
            index = view.proxy.index(row, 0, parent)
            node = index.data(NodeRole)
            if node.entry is not None:
                out[node.key] = index
            stack.append(index)
    return out


def run_dialog(qtbot, window, kind, fill):
    dialog = window.check_dialog()
    assert dialog is not None and dialog.isVisible()
    fill(dialog)
    dialog.kinds.button(kind).setChecked(True)
    with qtbot.waitSignal(window.check_done, timeout=WAIT) as shown:
        dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).click()
    return shown.args[0]


def test_builder_check_colours_the_tree_and_copies_the_fix(qtbot, window, files):
    open_and_wait(qtbot, window, files / "dp.pt")
    assert window.check_action.isEnabled()
    builder = f"{files / 'tinynet.py'}:make_tiny"
    view = run_dialog(qtbot, window, BUILDER, lambda d: d.builder_edit.setText(builder))
    assert isinstance(view, CheckView) and window.tabs.currentWidget() is view
    report = view.report
    assert not report.compatible
    assert report.missing[0] == "0.weight" and report.unexpected[0] == "module.0.weight"
    assert "make_tiny()" in view.title
    rows = rows_by_key(view)
    for key, status in (("0.weight", MISSING), ("module.0.weight", UNEXPECTED)):
        index = rows[key]
        assert index.siblingAtColumn(STATUS).data() == status
        brush = index.data(Qt.ItemDataRole.ForegroundRole)
        assert brush.color().name() == status_color(status)
        assert index.data(Qt.ItemDataRole.DecorationRole) is not None
    assert rows["0.weight"].siblingAtColumn(MODEL).data() == "float32[8, 3, 3, 3]"
    assert rows["0.weight"].siblingAtColumn(CHECKPOINT).data() == "—"
    # the fix: strip module., then it loads; Copy puts its code on the clipboard
    assert view.fix_box.isVisibleTo(view) and "then it loads" in view.fix_label.text()
    assert 'k.removeprefix("module.")' in view.fix_code.toPlainText()
    view.copy_button.click()
    assert QApplication.clipboard().text() == report.fix.code
    # filters: Missing shows the model's keys only
    missing_button = view.filter_buttons.button(2)
    assert missing_button.text() == f"Missing  {len(report.missing)}"
    missing_button.setChecked(True)
    assert set(rows_by_key(view)) == set(report.missing)
    view.filter_buttons.button(0).setChecked(True)
    window.close_tab(window.tabs.indexOf(view))


def test_arch_list_another_tab_and_the_part(qtbot, window, files, monkeypatch):
    monkeypatch.setattr(launch, "_arch_names", [])
    open_and_wait(qtbot, window, files / "other.pt")
    open_and_wait(qtbot, window, files / "dp.pt")
    dialog = window.check_dialog()
    # torchvision's names come from a child process while the dialog is open
    qtbot.waitUntil(lambda: dialog.arch_box.count() > 10, timeout=WAIT)
    assert dialog.arch_box.findText("resnet18") >= 0
    assert dialog.other_box.count() == 1 and dialog.other_box.currentData() == str(
        files / "other.pt")
    assert dialog.part_box.currentData() == ""
    dialog.kinds.button(OTHER).setChecked(True)
    assert dialog.request() == CheckRequest(str(files / "dp.pt"), against=str(
        files / "other.pt"), key="")
    with qtbot.waitSignal(window.check_done, timeout=WAIT) as shown:
        dialog.buttons.button(QDialogButtonBox.StandardButton.Ok).click()
    view = shown.args[0]
    assert view.report.fix.strip_prefix == "module."
    assert view.report.fix.remaining["mismatched"] == ["4.weight", "4.bias"]
    assert "still fails" in view.fix_label.text()
    rows = rows_by_key(view)
    assert rows["4.weight"].siblingAtColumn(STATUS).data() == MISSING
    assert rows["module.4.weight"].siblingAtColumn(STATUS).data() == UNEXPECTED
    # the same request again goes to its tab
    assert window.check_request(view.request) is view


def test_bad_architecture_shows_the_childs_line(qtbot, window, files):
    open_and_wait(qtbot, window, files / "dp.pt")
    view = window.check_request(CheckRequest(str(files / "dp.pt"), arch="resnet17"))
    with qtbot.waitSignal(view.failed, timeout=WAIT) as failed:
        pass
    assert "torchvision has no model called 'resnet17'" in failed.args[0]
    assert view.pages.currentIndex() == 0 and view.message_page.button.isVisible()


def test_cancel_kills_the_child(qtbot, window, files):
    open_and_wait(qtbot, window, files / "dp.pt")
    view = window.check_request(CheckRequest(str(files / "dp.pt"), arch="resnet18"))
    assert view.task is not None
    view.cancel()
    assert view.task is None and "cancelled" in view.message_page.label.text()
    window.close_tab(window.tabs.indexOf(view))


def test_model_over_a_report(qtbot, qtmodeltester):
    rows = [KeyRow("a.weight", OK, Spec((2,), "float32"), Spec((2,), "float32")),
            KeyRow("a.bias", MISSING, None, Spec((2,), "float32")),
            KeyRow("b.weight", MISMATCHED, Spec((3,), "float32"), Spec((2,), "float32")),
            KeyRow("extra", UNEXPECTED, Spec((1,), "float16"), None)]
    report = CheckReport("f.pt", "", {"kind": "arch", "name": "x", "tensors": 3},
                         ["a.bias"], ["extra"], rows=rows)
    for grouped in (True, False):
        model = CheckModel(build_tree(report.rows, grouped))
        qtmodeltester.check(model)
    model = CheckModel(build_tree(report.rows, True))
    a = model.index(0, KEY)
    assert a.data() == "a" and a.siblingAtColumn(STATUS).data() == "1 of 2 fail"
    assert a.data(Qt.ItemDataRole.ForegroundRole).color().name() == status_color(MISSING)
    assert len(FILTERS) == 6 and set(STATUS_STYLE) >= {OK, MISSING, UNEXPECTED, MISMATCHED}


def test_builder_functions_are_read_not_run(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import sys\nsys.exit(3)\ndef helper(): pass\ndef build_model(): pass\n"
                    "def _private(): pass\n")
    assert builder_functions(str(path)) == ["build_model", "helper"]
    assert builder_functions(str(tmp_path / "missing.py")) == []

