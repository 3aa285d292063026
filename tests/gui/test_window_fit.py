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


def _sideways(view):
    """Pixels the key tree's columns lack (0: every column shows whole)."""
    return view.tree.horizontalScrollBar().maximum()


def test_every_column_shows_in_a_1024_window(qtbot, window, resnet_params):
    from ckpt_inspector.gui.tree.checkpoint_view import SIDE_MIN
    from ckpt_inspector.gui.tree.model import DEVICE

    window.resize(1024, 700)
    view = open_and_wait(qtbot, window, resnet_params[0])
    qtbot.wait(100)
    header = view.tree.header()
    assert _sideways(view) == 0, [header.sectionSize(c) for c in range(7)]
    assert window.browser_dock.width() <= 152  # the Files panel yields (220 at 1,400)
    # the key column is as wide as its keys, plus what is left over: never mostly empty
    # while other columns are cut
    need = view.tree.sizeHintForColumn(KEY) + 12
    assert header.sectionSize(KEY) >= need
    # every row open: the deepest keys need more; the summary yields, and the key column
    # keeps a readable width
    view.tree.expandAll()
    qtbot.wait(100)
    side = view.splitter.sizes()[1]
    assert _sideways(view) == 0 or side <= SIDE_MIN + 1
    assert header.sectionSize(KEY) >= min(KEY_MIN, view.tree.sizeHintForColumn(KEY))
    assert not view.tree.isColumnHidden(DEVICE) and header.sectionSize(DEVICE) > 40


def test_the_device_column_fits_cuda_to_cpu_before_a_row_is_open(qtbot, window, cuda_file):
    from ckpt_inspector.gui.tree.model import DEVICE

    view = open_and_wait(qtbot, window, cuda_file[0])
    view.tree.collapseAll()
    view.columns.fit()  # measured with no tensor row in sight
    text = "cuda:0 → cpu"
    assert view.tree.fontMetrics().horizontalAdvance(text) + 8 <= \
        view.tree.header().sectionSize(DEVICE)
    view.tree.expandAll()
    idx = next(_tensor_rows(view))
    assert idx.siblingAtColumn(DEVICE).data() == text


def test_the_files_panel_yields_in_a_narrow_window_and_comes_back(qtbot, window):
    from ckpt_inspector.gui.actions import FILES_WIDTH
    from ckpt_inspector.gui.dock_fit import dock_cap

    window.resize(1400, 860)
    qtbot.waitUntil(lambda: abs(window.browser_dock.width() - FILES_WIDTH) <= 2, timeout=3000)
    window.resize(1024, 700)
    qtbot.waitUntil(lambda: window.browser_dock.width() <= dock_cap(1024) + 2, timeout=3000)
    window.resize(1400, 860)
    qtbot.waitUntil(lambda: abs(window.browser_dock.width() - FILES_WIDTH) <= 2, timeout=3000)
    # a width the user drags to is the one it comes back to
    window.resizeDocks([window.browser_dock], [300], Qt.Orientation.Horizontal)
    qtbot.waitUntil(lambda: abs(window.browser_dock.width() - 300) <= 2, timeout=3000)
    window.resize(1024, 700)
    qtbot.waitUntil(lambda: window.browser_dock.width() <= dock_cap(1024) + 2, timeout=3000)
    window.resize(1400, 860)
    qtbot.waitUntil(lambda: abs(window.browser_dock.width() - 300) <= 2, timeout=3000)
