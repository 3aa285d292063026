"""The window on a small screen, and the key tree's columns: the Key column keeps a readable
width, the others fit their content, a tensor in pieces names its files."""

from __future__ import annotations

import zero_files
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QGuiApplication

from ckpt_inspector.gui.main_window import MainWindow
from ckpt_inspector.gui.tree.checkpoint_view import KEY_MIN
from ckpt_inspector.gui.tree.model import FILE, KEY, NodeRole
from ckpt_inspector.gui.tree.widgets import ElideMiddle

from support import open_and_wait


def _tensor_rows(view):
    proxy, stack = view.proxy, [view.tree.rootIndex()]
    while stack:
        parent = stack.pop(0)
        for row in range(proxy.rowCount(parent)):
            idx = proxy.index(row, KEY, parent)
            if idx.data(NodeRole).is_tensor:
                yield idx
            stack.append(idx)


def test_a_tensor_in_pieces_names_its_first_file_and_how_many_more(qtbot, window, torch,
                                                                     tmp_path):
    root = zero_files.save(torch, tmp_path / "zero", 3, 2)
    view = open_and_wait(qtbot, window, root)
    assert not view.tree.isColumnHidden(FILE)
    pieced = [i for i in _tensor_rows(view) if len({p.get("file") for p in (
        i.data(NodeRole).node.tensor.pieces or ())}) == 2]
    assert pieced
    idx = pieced[0]
    node = idx.data(NodeRole)
    text = idx.siblingAtColumn(FILE).data()
    # named in the tag folder all the files lie in (global_step3/): the rank is what differs
    assert text == f"{node.node.tensor.file.split('/', 1)[1]} +1"
    assert text.startswith("zero_pp_rank_")
    tip = idx.data(Qt.ItemDataRole.ToolTipRole)
    for piece in node.node.tensor.pieces:
        assert piece["file"] in tip
    # the rank, which is all that differs between the files, is kept when the name is cut
    assert isinstance(view.tree.itemDelegateForColumn(FILE), ElideMiddle)


def test_the_key_column_stays_readable_in_a_small_window(qtbot, window, torch, tmp_path):
    root = zero_files.save(torch, tmp_path / "zero", 3, 2)
    window.resize(1024, 700)
    view = open_and_wait(qtbot, window, root)
    qtbot.wait(50)
    header = view.tree.header()
    assert header.sectionSize(KEY) >= KEY_MIN
    assert header.sectionSize(FILE) <= 240
    window.resize(1400, 860)  # more room: the Key column takes it
    qtbot.wait(200)
    shown = sum(header.sectionSize(c) for c in range(7) if not view.tree.isColumnHidden(c))
    assert shown == view.tree.viewport().width()  # the Key column takes the slack


def test_the_first_window_fits_the_screen(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "fresh.ini"), QSettings.Format.IniFormat)
    win = MainWindow(settings=settings, probe_devices=False)
    qtbot.addWidget(win)
    area = (win.screen() or QGuiApplication.primaryScreen()).availableGeometry()
    assert win.width() <= area.width() and win.height() <= area.height()
    win.close()
