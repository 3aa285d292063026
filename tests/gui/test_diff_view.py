"""Comparing two checkpoints in the window, offscreen: File > Compare, the merged key tree,
filters, numeric sorting, both sides' statistics and the A − B histogram, prefix rules,
cancelling, Shift-drop and the tab menu."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import QMimeData, QModelIndex, QPoint, QPointF, Qt
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QTextDocument
from PySide6.QtWidgets import QApplication

from ckpt_inspector.core.formats import open_checkpoint
from ckpt_inspector.core.keytree import natural_key
from ckpt_inspector.core.ops import diff as core_diff
from ckpt_inspector.core.ops.difftree import build_tree
from ckpt_inspector.core.ops.stats import format_number
from ckpt_inspector.gui import analysis as analysis_mod
from ckpt_inspector.gui.diff import view as dv
from ckpt_inspector.gui.diff.entry_panel import EntryPanel
from ckpt_inspector.gui.diff.model import (
    ALL,
    CHANGED_COL,
    CHANGED_ONLY,
    COSINE,
    KEY,
    MAX_ABS,
    MISSING,
    REL_L2,
    SHAPES,
    STATUS,
    DiffModel,
)
from ckpt_inspector.gui.diff.view import DiffView
from ckpt_inspector.gui.dropping import drop_urls
from ckpt_inspector.gui.html.diff import numbers_rows, percent, status_color
from ckpt_inspector.gui.tree.model import NodeRole

from support import TinyNet, drive, open_and_wait, run_cli

WAIT = 60_000
CHANGED_KEYS = {"4.weight", "4.bias", "1.running_var", "0.bias", "1.num_batches_tracked",
                "head.scale"}


@pytest.fixture()
def pair(tmp_path, torch):
    """A small model's state_dict and a "fine-tuned" copy: three tensors changed by very
    different amounts (rel L2 about 15, 0.01 and 1e-5, so text order is not number order),
    one shape changed, one key dropped and one added."""
    torch.manual_seed(1)
    a = TinyNet.make(torch).state_dict()
    b = {k: v.clone() for k, v in a.items()}
    b["4.weight"] = b["4.weight"] + 0.5 * torch.randn_like(b["4.weight"])
    b["4.bias"] = b["4.bias"] + 1e-6
    b["1.running_var"] = b["1.running_var"] * 1.01
    b["0.bias"] = torch.zeros(16)
    del b["1.num_batches_tracked"]
    b["head.scale"] = torch.tensor([2.0])
    path_a, path_b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(a, path_a)
    torch.save(b, path_b)
    return str(path_a), str(path_b), a, b


def plain(html: str) -> str:
    doc = QTextDocument()
    doc.setHtml(html)
    return " ".join(doc.toPlainText().replace("\u00a0", " ").split())


def leaf_keys(view: DiffView) -> list[str]:
    """Keys of the entries the tree shows, top to bottom."""
    out = []

    def visit(parent: QModelIndex) -> None:
        for row in range(view.proxy.rowCount(parent)):
            index = view.proxy.index(row, 0, parent)
            node = index.data(NodeRole)
            if node.entry is not None:
                out.append(node.key)
            visit(index)

    visit(QModelIndex())
    return out


def compare(qtbot, window, path_a, path_b) -> DiffView:
    with qtbot.waitSignal(window.comparison_shown, timeout=WAIT) as blocker:
        window.compare_paths(path_a, path_b)
    return blocker.args[0]


def wait_for_entry(qtbot, view: DiffView, key: str) -> EntryPanel:
    assert view.select_key(key), key
    panel = view.entry_panel
    assert panel.node is not None and panel.node.key == key
    qtbot.waitUntil(lambda: not panel.busy, timeout=WAIT)
    return panel


def test_compare_from_the_file_menu(qtbot, window, pair, monkeypatch):
    path_a, path_b, a, b = pair
    open_and_wait(qtbot, window, path_a)
    asked = []

    def pick(title):
        asked.append(title)
        return path_b

    monkeypatch.setattr(window, "ask_compare_file", pick)
    with qtbot.waitSignal(window.comparison_shown, timeout=WAIT) as blocker:
        window.compare_action.trigger()
    view = blocker.args[0]
    # A is the current tab's file: only B was asked for
    assert len(asked) == 1 and "a.pt" in asked[0]
    assert (view.path_a, view.path_b) == (path_a, path_b)
    assert window.tabs.count() == 2 and window.tabs.currentWidget() is view
    assert window.tabs.tabText(1) == "a.pt ↔ b.pt"
    assert path_a in window.tabs.tabToolTip(1) and path_b in window.tabs.tabToolTip(1)
    assert window.windowTitle().startswith("a.pt ↔ b.pt")
    header = plain(view.header.text())
    assert path_a in header and path_b in header and "Keys matched exactly" in header
    for text in ("DIFFERENT", "3 values changed", "1 shape changed", "1 only in A",
                 "1 only in B", "4 identical"):
        assert text in header, (text, header)
    # every element of the three changed tensors, of all those compared one to one
    compared = sum(t.numel() for k, t in a.items() if k in b and b[k].shape == t.shape)
    assert f"2,898 of {compared:,} elements" in header, header
    assert view.filter_buttons.button(CHANGED_ONLY).text().split() == ["Changed", "6"]
    assert not view.filter_buttons.button(MISSING).text().endswith(" 0")
    assert "6 differ" in window.file_label.text()


def test_the_window_and_the_command_line_sum_up_in_the_same_words(qtbot, window, pair):
    path_a, path_b, a, b = pair
    view = compare(qtbot, window, path_a, path_b)
    proc = run_cli("diff", path_a, path_b)
    assert proc.returncode == 1, proc.stderr
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith("DIFFERENT:")]
    _statuses, figures = line.removeprefix("DIFFERENT: ").split("; ")
    # both figures: the elements that changed, and what the tensors that differ hold
    shared = [k for k in a if k in b]
    differ = [k for k in shared if not a[k].equal(b[k]) or a[k].dtype != b[k].dtype]
    held = sum(max(a[k].numel(), b[k].numel()) for k in differ)
    assert figures.startswith("2,898 of ") and "elements compared changed" in figures
    assert figures.endswith(f"in {len(differ)} tensors holding {held:,} elements"), figures
    header = plain(view.header.text())
    assert figures in header, (figures, header)


def test_filters_keep_the_changed_keys_and_their_groups(qtbot, window, pair):
    path_a, path_b, a, _b = pair
    view = compare(qtbot, window, path_a, path_b)
    assert sorted(leaf_keys(view)) == sorted(set(a) | {"head.scale"})
    view.filter_buttons.button(CHANGED_ONLY).click()
    assert set(leaf_keys(view)) == CHANGED_KEYS
    view.filter_buttons.button(MISSING).click()
    assert set(leaf_keys(view)) == {"1.num_batches_tracked", "head.scale"}
    view.filter_buttons.button(SHAPES).click()
    assert leaf_keys(view) == ["0.bias"]
    # grouped: a match keeps its groups, which sum up what is below them
    view.filter_buttons.button(CHANGED_ONLY).click()
    view.group_box.setChecked(True)
    assert set(leaf_keys(view)) == CHANGED_KEYS
    top = {view.proxy.index(r, 0).data(NodeRole).key: view.proxy.index(r, 0)
           for r in range(view.proxy.rowCount())}
    assert set(top) == {"0", "1", "4", "head"}
    group = top["4"]
    assert group.siblingAtColumn(STATUS).data() == "2 of 2 changed"
    assert top["1"].siblingAtColumn(STATUS).data() == "2 of 5 changed"
    # the group takes its worst child's colour: 0.bias changed shape (red)
    shape_colour = status_color(core_diff.SHAPE)
    assert top["0"].data(Qt.ItemDataRole.ForegroundRole).color().name() == shape_colour
    assert view.proxy.rowCount(top["1"]) == 2  # identical children are filtered out
    # the key filter, combined with the status filter
    view.filter_edit.setText("running")
    view.apply_filter()
    assert leaf_keys(view) == ["1.running_var"]
    view.filter_buttons.button(ALL).click()
    assert sorted(leaf_keys(view)) == ["1.running_mean", "1.running_var"]
    view.filter_edit.setText("nothing-like-this")
    view.apply_filter()
    assert leaf_keys(view) == [] and "no match" in view.match_label.text()


def test_sorting_by_difference_is_numeric(qtbot, window, pair):
    path_a, path_b, _a, _b = pair
    view = compare(qtbot, window, path_a, path_b)
    view.filter_buttons.button(CHANGED_ONLY).click()
    # opened flat, largest relative difference first
    assert view.tree.header().sortIndicatorSection() == REL_L2
    keys = leaf_keys(view)
    # what no number measures first: the shape change, then the keys on one side only
    assert keys[:3] == ["0.bias", "1.num_batches_tracked", "head.scale"]
    assert [k for k in keys if k in ("4.weight", "1.running_var", "4.bias")] == [
        "4.weight", "1.running_var", "4.bias"]
    shown = [view.proxy.index(r, REL_L2).data() for r in range(view.proxy.rowCount())]
    numbers = [s for s in shown if s]  # about 15, 0.01 and 4e-05: as text 4e-05 is first
    assert numbers == sorted(numbers, key=float, reverse=True) != sorted(numbers, reverse=True)
    view.tree.sortByColumn(REL_L2, Qt.SortOrder.AscendingOrder)
    ordered = [k for k in leaf_keys(view) if k in ("4.weight", "1.running_var", "4.bias")]
    assert ordered == ["4.bias", "1.running_var", "4.weight"]
    view.tree.sortByColumn(MAX_ABS, Qt.SortOrder.DescendingOrder)
    assert leaf_keys(view)[0] == "4.weight"
    view.tree.sortByColumn(CHANGED_COL, Qt.SortOrder.DescendingOrder)
    assert leaf_keys(view)[:2] == ["4.weight", "4.bias"]  # 2,880 and 10 elements
    view.tree.sortByColumn(COSINE, Qt.SortOrder.AscendingOrder)
    assert leaf_keys(view)[0] == "4.weight"  # the least similar
    view.tree.sortByColumn(KEY, Qt.SortOrder.AscendingOrder)
    assert leaf_keys(view) == sorted(CHANGED_KEYS, key=natural_key)
    # the sort holds when switching to groups and back
    view.group_box.setChecked(True)
    assert view.tree.header().sortIndicatorSection() == KEY


def test_before_a_key_is_selected_the_panel_lists_the_changes_across_its_width(qtbot,
                                                                              window, pair):
    from PySide6.QtCore import QUrl

    from ckpt_inspector.gui.html.overview import key_href

    path_a, path_b, _a, _b = pair
    view = compare(qtbot, window, path_a, path_b)
    panel = view.entry_panel
    assert panel.node is None and not panel.right.isVisible()  # no empty half
    assert panel.text.width() > 0.9 * panel.width()
    text = plain(panel.text.toHtml())
    assert "Largest changes" in text and "4.weight" in text
    assert "only in A (1) — 1.num_batches_tracked" in text, text
    assert "shape changed (1) — 0.bias" in text
    panel.text.anchorClicked.emit(QUrl(key_href("4.weight")))
    assert view.current_node().key == "4.weight"
    assert panel.right.isVisible()  # the histogram of A − B beside the figures
    view.group_box.setChecked(True)
    assert view.select_key("4")  # a group: its counts, across the width again
    assert not panel.right.isVisible()


def test_in_a_1024_window_every_column_shows_and_keys_stay_readable(qtbot, window, pair):
    path_a, path_b, _a, _b = pair
    window.resize(1024, 700)
    view = compare(qtbot, window, path_a, path_b)
    qtbot.wait(100)
    tree, header = view.tree, view.tree.header()
    assert tree.horizontalScrollBar().maximum() == 0, [header.sectionSize(c) for c in range(8)]
    assert header.sectionSize(KEY) >= min(dv.KEY_MIN, tree.sizeHintForColumn(KEY))
    for col in (MAX_ABS, REL_L2, COSINE, CHANGED_COL):  # the figures are never cut
        assert header.sectionSize(col) >= tree.sizeHintForColumn(col), col
    window.resize(1600, 900)  # room: the key column takes it
    qtbot.wait(100)
    assert sum(header.sectionSize(c) for c in range(8)) == tree.viewport().width()


def test_the_difference_columns_share_one_precision(qtbot, window, pair):
    path_a, path_b, _a, _b = pair
    view = compare(qtbot, window, path_a, path_b)
    view.group_box.setChecked(False)
    rows = [[view.proxy.index(r, c).data() for c in (MAX_ABS, REL_L2, COSINE)]
            for r in range(view.proxy.rowCount())]
    cells = [cell for row in rows for cell in row if cell]
    assert len(cells) >= 9

    def significant(text):  # digits of the mantissa, without leading zeros
        mantissa = text.split("e")[0].lstrip("-").replace(".", "").lstrip("0")
        return len(mantissa)

    for cell in cells:
        assert significant(cell.split(" ")[-1]) <= 4, cell
    # 4.bias moved by 1e-6: its cosine is 1 to nine digits, and says by how much it is not
    cosine = dict(zip(leaf_keys(view), (row[2] for row in rows)))["4.bias"]
    assert cosine.startswith("1 − ") and float(cosine.split(" ")[-1]) < 1e-4, cosine


def test_selecting_a_changed_key_shows_both_sides_and_the_difference(qtbot, window, pair,
                                                                      torch):
    path_a, path_b, a, b = pair
    view = compare(qtbot, window, path_a, path_b)
    panel = wait_for_entry(qtbot, view, "4.weight")
    entry = panel.node.entry
    stats_a = panel.cached_stats(entry.a.tensor)
    stats_b = panel.cached_stats(entry.b.tensor)
    assert stats_a.mean == pytest.approx(float(a["4.weight"].double().mean()), abs=1e-9)
    assert stats_b.std == pytest.approx(float(b["4.weight"].double().std(unbiased=False)),
                                        rel=1e-6)
    text = view.entry_panel.text.toPlainText()
    for word in ("Difference", "max |A−B|", "cosine", "Statistics", "min", "std", "NaN",
                 "float32", "[10,288]"):
        assert word in text, (word, text)
    assert format_number(stats_a.mean) in text and format_number(stats_b.mean) in text
    hist = panel.hist_panel
    assert panel.hist_pages.currentWidget() is hist and hist.isVisibleTo(view)
    assert hist.histogram.counts.sum() == a["4.weight"].numel()
    d = (a["4.weight"].double() - b["4.weight"].double()).abs().max().item()
    assert float(hist.histogram.edges[-1]) == pytest.approx(d)
    assert hist.plot.getAxis("bottom").labelText == "A − B"
    assert "2,880 differences" in hist.note.text()
    # going back is instant: everything was kept
    wait_for_entry(qtbot, view, "4.bias")
    view.select_key("4.weight")
    assert not panel.busy and panel.hist_pages.currentWidget() is hist
    # a key in one file only: its statistics, no difference
    panel = wait_for_entry(qtbot, view, "head.scale")
    assert "Only in B" in panel.hist_note.text()
    assert panel.hist_pages.currentWidget() is panel.hist_note
    assert "only in B" in panel.text.toPlainText() and "2" in panel.text.toPlainText()
    # a shape change of a different size: no element-wise difference
    panel = wait_for_entry(qtbot, view, "0.bias")
    assert "Different numbers of elements" in panel.hist_note.text()
    assert "[8]" in panel.text.toPlainText() and "[16]" in panel.text.toPlainText()
    # an identical key
    panel = wait_for_entry(qtbot, view, "0.weight")
    assert "Identical" in panel.hist_note.text()
    # the user's bin count is used from then on
    wait_for_entry(qtbot, view, "4.weight")
    panel.hist_panel.bins.setValue(7)
    qtbot.waitUntil(lambda: panel.hist_panel.histogram.counts.size == 7, timeout=WAIT)


def test_a_reshaped_tensor_has_a_difference_histogram(qtbot, window, tmp_path, torch):
    t = torch.arange(12.0)
    torch.save({"w": t, "step": 3}, tmp_path / "a.pt")
    torch.save({"w": (t + 1).reshape(3, 4), "step": 4}, tmp_path / "b.pt")
    view = compare(qtbot, window, str(tmp_path / "a.pt"), str(tmp_path / "b.pt"))
    panel = wait_for_entry(qtbot, view, "w")
    assert panel.hist_panel.histogram.counts.sum() == 12
    assert "element by element" in panel.text.toPlainText()
    assert "12 of 12" in panel.text.toPlainText()
    # a value that changed: both values listed
    panel = wait_for_entry(qtbot, view, "step")
    text = panel.text.toPlainText()
    assert "values changed" in text and "value" in text and "3" in text and "4" in text
    assert "Not two tensors" in panel.hist_note.text()


def test_data_parallel_copy_matches_after_the_automatic_rule(qtbot, window, tmp_path, torch):
    sd = TinyNet.make(torch).state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dp.pt")
    view = compare(qtbot, window, str(tmp_path / "plain.pt"), str(tmp_path / "dp.pt"))
    header = plain(view.header.text())
    assert "'module.' stripped from B's keys" in header and "found automatically" in header
    assert "IDENTICAL" in header and f"{len(sd)} identical" in header
    assert sorted(leaf_keys(view)) == sorted(sd)
    panel = wait_for_entry(qtbot, view, "4.weight")
    text = panel.text.toPlainText()
    assert "key in the file" in text and "module.4.weight" in text
    assert "Identical" in panel.hist_note.text()


def test_cancel_stops_the_comparison_and_it_can_be_run_again(qtbot, window, pair,
                                                             monkeypatch):
    path_a, path_b, _a, _b = pair
    stops = []

    def slow(path_a, path_b, options=None, cancel=None):
        stops.append(cancel)
        for _ in range(1000):
            time.sleep(0.01)
            if cancel.is_set():
                return None
            yield core_diff.Progress("comparing", 1, 4)
        raise AssertionError("not cancelled")

    real = dv.compare_files
    monkeypatch.setattr(dv, "compare_files", slow)
    view = window.compare_paths(path_a, path_b)
    qtbot.waitUntil(lambda: window.progress.value() == 250, timeout=WAIT)
    assert "Comparing a.pt ↔ b.pt" in window.task_label.text()
    assert window.progress.maximum() == 1000 and window.progress.isVisibleTo(window)
    assert "comparing" in view.message.text() and view.progress.isVisibleTo(view)
    window.cancel_button.click()
    assert stops[0].is_set() and not window.runner.tasks
    assert "cancelled" in view.message.text() and view.retry_button.isVisibleTo(view)
    assert view.comparison is None
    cancel_here = view.message_page.cancel_button
    assert not cancel_here.isVisibleTo(view)  # only while it runs
    view.retry_button.click()  # again, and this time the Cancel under the progress bar
    qtbot.waitUntil(lambda: len(stops) == 2 and window.progress.value() == 250, timeout=WAIT)
    assert cancel_here.isVisibleTo(view) and not view.retry_button.isVisibleTo(view)
    cancel_here.click()
    assert stops[1].is_set() and not window.runner.tasks
    assert "cancelled" in view.message.text() and not cancel_here.isVisibleTo(view)
    monkeypatch.setattr(dv, "compare_files", real)
    with qtbot.waitSignal(view.shown, timeout=WAIT):
        view.retry_button.click()
    assert view.comparison is not None and view.pages.currentIndex() == 1


def test_selecting_another_key_cancels_its_statistics(qtbot, window, pair, monkeypatch):
    path_a, path_b, _a, _b = pair
    view = compare(qtbot, window, path_a, path_b)
    stops = []

    def endless(a, b, pair, bins, cancel=None):
        stops.append(cancel)
        while not cancel.is_set():
            time.sleep(0.01)
            yield core_diff.Progress("A statistics", 1, 3)

    real = analysis_mod.analyse_pair
    monkeypatch.setattr(analysis_mod, "analyse_pair", endless)
    view.select_key("4.weight")
    panel = view.entry_panel
    qtbot.waitUntil(lambda: "33%" in panel.status.text(), timeout=WAIT)
    job = panel._job
    assert panel.cancel_button.isVisibleTo(view) and "…" in panel.text.toPlainText()
    monkeypatch.setattr(analysis_mod, "analyse_pair", real)
    panel = wait_for_entry(qtbot, view, "4.bias")
    assert job.cancelled and stops[0].is_set()
    assert panel.hist_panel.histogram is not None
    # the Cancel button stops it too
    monkeypatch.setattr(analysis_mod, "analyse_pair", endless)
    view.select_key("1.running_var")
    qtbot.waitUntil(lambda: "33%" in panel.status.text(), timeout=WAIT)
    panel.cancel_button.click()
    assert stops[-1].is_set() and panel.status.text() == "cancelled"
    assert not panel.cancel_button.isVisibleTo(view)


def shift_drop(window, paths, modifiers=Qt.KeyboardModifier.ShiftModifier):
    mime = QMimeData()
    mime.setUrls(drop_urls([str(p) for p in paths]))
    enter = QDragEnterEvent(QPoint(50, 50), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, modifiers)
    QApplication.sendEvent(window, enter)
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, modifiers)
    assert QApplication.sendEvent(window, event)


def test_shift_drop_compares_with_the_current_file(qtbot, window, pair):
    path_a, path_b, _a, _b = pair
    open_and_wait(qtbot, window, path_a)
    with qtbot.waitSignal(window.comparison_shown, timeout=WAIT) as blocker:
        shift_drop(window, [path_b])
    view = blocker.args[0]
    assert (view.path_a, view.path_b) == (path_a, path_b) and window.tabs.count() == 2
    # two files dropped with Shift: compared with each other (the open tab is reused)
    shift_drop(window, [path_a, path_b])
    assert window.tabs.count() == 2 and window.tabs.currentWidget() is view
    # without Shift a drop opens the file, as ever
    with qtbot.waitSignal(window.file_shown, timeout=WAIT):
        shift_drop(window, [path_b], Qt.KeyboardModifier.NoModifier)
    assert window.current_view().path == path_b and window.tabs.count() == 3


def test_tab_menu_compares_and_closing_lets_go(qtbot, window, pair, monkeypatch):
    path_a, path_b, _a, _b = pair
    open_and_wait(qtbot, window, path_a)
    open_and_wait(qtbot, window, path_b)
    menu = window.tab_menu(0)
    texts = [a.text() for a in menu.actions()]
    assert "Compare with…" in texts
    sub = next(a.menu() for a in menu.actions() if a.menu() is not None)
    [other] = sub.actions()
    assert other.text() == "b.pt"
    with qtbot.waitSignal(window.comparison_shown, timeout=WAIT) as blocker:
        other.trigger()
    view = blocker.args[0]
    assert (view.path_a, view.path_b) == (path_a, path_b)
    # "Compare with…" asks for B only
    monkeypatch.setattr(window, "ask_compare_file", lambda _title: path_a)
    compare_with = next(a for a in window.tab_menu(1).actions() if a.text() == "Compare with…")
    with qtbot.waitSignal(window.comparison_shown, timeout=WAIT) as blocker:
        compare_with.trigger()
    assert (blocker.args[0].path_a, blocker.args[0].path_b) == (path_b, path_a)
    # a comparison's own menu: swap A and B reuses that tab; closing disposes the view
    swap = next(a for a in window.tab_menu(window.tabs.indexOf(view)).actions()
                if a.text() == "Swap A and B")
    swap.trigger()
    assert window.tabs.currentWidget() is blocker.args[0]
    window.close_tab(window.tabs.indexOf(view))
    assert view.comparison is None and view.proxy.sourceModel() is None


def test_compare_without_a_tab_asks_for_both_files(qtbot, window, pair, monkeypatch):
    path_a, path_b, _a, _b = pair
    answers = [path_a, path_b]
    monkeypatch.setattr(window, "ask_compare_file", lambda _title: answers.pop(0))
    with qtbot.waitSignal(window.comparison_shown, timeout=WAIT):
        window.compare_action.trigger()
    assert not answers
    # cancelling the first dialog starts nothing
    window.close_tab(0)
    monkeypatch.setattr(window, "ask_compare_file", lambda _title: "")
    assert window.compare_dialog() is None and window.tabs.count() == 0


def test_show_in_file_opens_the_key(qtbot, window, tmp_path, torch):
    sd = TinyNet.make(torch).state_dict()
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "dp.pt")
    compare(qtbot, window, str(tmp_path / "plain.pt"), str(tmp_path / "dp.pt"))
    with qtbot.waitSignal(window.file_shown, timeout=WAIT):
        window.show_key_in_file(str(tmp_path / "dp.pt"), "module.4.weight")
    assert window.current_view().current_node().key == "module.4.weight"


def test_an_unreadable_file_says_why(qtbot, window, pair, tmp_path):
    path_a, _path_b, _a, _b = pair
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    shown = []
    window.comparison_shown.connect(shown.append)
    view = window.compare_paths(path_a, str(bad))
    qtbot.waitUntil(lambda: window.reporter.last is not None
                    and window.reporter.last.isVisible(), timeout=WAIT)
    assert not shown and view.comparison is None
    box = window.reporter.last
    assert "broken.pt" in box.text() and "Could not compare" in box.windowTitle()
    assert "Could not compare" in view.message.text() and view.retry_button.isVisibleTo(view)
    box.close()


def test_two_bare_tensors(qtbot, window, tmp_path, torch):
    torch.save(torch.arange(6.0), tmp_path / "x.pt")
    torch.save(torch.arange(6.0) * 2, tmp_path / "y.pt")
    view = compare(qtbot, window, str(tmp_path / "x.pt"), str(tmp_path / "y.pt"))
    assert leaf_keys(view) == [""]
    assert view.proxy.index(0, KEY).data() == "(root)"
    panel = wait_for_entry(qtbot, view, "")
    assert panel.hist_panel.histogram.counts.sum() == 6
    assert "5 of 6" in panel.text.toPlainText()  # 0 * 2 == 0


@pytest.mark.parametrize("grouped", [True, False])
def test_diff_model_passes_qtmodeltester(qtmodeltester, pair, grouped):
    path_a, path_b, _a, _b = pair
    result = drive(core_diff.diff(open_checkpoint(path_a), open_checkpoint(path_b)))
    model = DiffModel(build_tree(result.entries, grouped))
    qtmodeltester.check(model, force_py=True)
    model.sort(REL_L2, Qt.SortOrder.DescendingOrder)
    qtmodeltester.check(model, force_py=True)


def test_small_shares_are_not_cut_off_in_rich_text():
    """"<0.1%" in rich text once started a tag and hid the rest of the line."""
    from ckpt_inspector.core.ops.diff import Numbers

    assert plain(f"changed ({percent(1, 10_000)}) of all") == "changed (<0.1%) of all"
    assert plain(f"({percent(9_999, 10_000)}) rest") == "(>99.9%) rest"
    rows = numbers_rows(Numbers(10_000, changed=1, max_abs=1.0, mean_abs=1e-4,
                                   rel_l2=0.1, cosine=0.99))
    assert "(<0.1%)" in plain(rows[0][1])


def test_the_header_names_each_files_verdict(qtbot, window, payload_files, marker, tmp_path,
                                             torch):
    """A comparison must not hide that one of the files is hostile (nor run it)."""
    safe = tmp_path / "safe.pt"
    torch.save({"weights": torch.ones(2)}, safe)
    with qtbot.waitSignal(window.comparison_shown, timeout=WAIT) as blocker:
        window.compare_paths(str(safe), str(payload_files["torch-zip"]))
    header = plain(blocker.args[0].header.text())
    assert "safe" in header and "DANGEROUS" in header, header
    assert not marker.exists()


def test_match_options_row_runs_the_cli_rules(qtbot, window, tmp_path, torch):
    """The options above the result: a part of A, a prefix, exact matching, and an error
    for a key that is not there, which the row then lets the user mend."""
    sd = TinyNet.make(torch).state_dict()
    train, plain_sd, dp = tmp_path / "train.ckpt", tmp_path / "sd.pt", tmp_path / "dp.pt"
    torch.save({"epoch": 3, "model_state_dict": sd}, train)
    torch.save(sd, plain_sd)
    torch.save({f"module.{k}": v for k, v in sd.items()}, dp)
    with qtbot.waitSignal(window.comparison_shown, timeout=WAIT) as blocker:
        window.compare_paths(str(train), str(plain_sd))
    view = blocker.args[0]
    assert "DIFFERENT" in plain(view.header.text())  # epoch is only in A
    view.part_a.setText("model_state_dict")
    with qtbot.waitSignal(view.shown, timeout=WAIT):
        view.apply_button.click()
    assert "IDENTICAL" in plain(view.header.text())
    view.part_a.setText("nope")
    with qtbot.waitSignal(view.failed, timeout=WAIT):
        view.apply_button.click()
    assert view.part_a.isVisible() and "nope" in plain(view.message.text())

    with qtbot.waitSignal(window.comparison_shown, timeout=WAIT) as blocker:
        window.compare_paths(str(plain_sd), str(dp))
    view = blocker.args[0]
    assert "found automatically" in plain(view.header.text())
    view.match_mode.setCurrentIndex(1)  # exactly
    assert not view.prefix_edit.isEnabled()
    with qtbot.waitSignal(view.shown, timeout=WAIT):
        view.apply_button.click()
    assert "DIFFERENT" in plain(view.header.text())
    view.match_mode.setCurrentIndex(2)
    view.prefix_edit.setText("module")
    view.prefix_side.setCurrentIndex(2)  # from B
    with qtbot.waitSignal(view.shown, timeout=WAIT):
        view.apply_button.click()
    header = plain(view.header.text())
    assert "IDENTICAL" in header and "'module.' stripped from B's keys" in header
