"""The tensor view, offscreen: statistics, histogram, heatmap and values follow the selection;
re-selection cancels; NaN are reported; values copy and save; a device runs in a child."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from PySide6.QtCore import QItemSelection, QItemSelectionModel, Qt
from PySide6.QtGui import QGuiApplication

from ckpt_inspector.core.ops.histogram import histogram
from ckpt_inspector.core.ops.stats import compute
from ckpt_inspector.core.progress import Progress
from ckpt_inspector.gui import analysis as analysis_mod
from ckpt_inspector.gui.tensor.view import HEATMAP, HISTOGRAM, VALUES

from support import find_row, open_and_wait, tensor_infos

WAIT = 60_000


def select(qtbot, view, key):
    view.tree.setCurrentIndex(find_row(view, key))
    tv = view.tensor_view
    info = tv.info
    assert info is not None and tv.key == key
    qtbot.waitUntil(lambda: tv.cached_stats(info) is not None or bool(tv.analysis.error(info)),
                    timeout=WAIT)
    qtbot.waitUntil(lambda: tv._stats_job is None, timeout=WAIT)
    return tv, tv.cached_stats(info)


def show_tab(qtbot, tv, tab):
    tv.tabs.setCurrentIndex(tab)
    if tab == HEATMAP:
        qtbot.waitUntil(lambda: tv._heat_job is None and tv.heat_panel.heatmap is not None,
                        timeout=WAIT)


def test_clicking_through_resnet18(qtbot, window, resnet_params, torch):
    """Every tensor of a resnet18 shows correct numbers and a picture."""
    path, sd = resnet_params
    view = open_and_wait(qtbot, window, path)
    for key in ("conv1.weight", "bn1.bias", "bn1.num_batches_tracked", "fc.weight",
                "layer4.1.conv2.weight", "bn1.running_var"):
        tv, stats = select(qtbot, view, key)
        t = sd[key].double()
        assert stats.numel == t.numel()
        assert stats.mean == pytest.approx(float(t.mean()), rel=1e-6, abs=1e-12)
        assert stats.std == pytest.approx(float(t.std(unbiased=False)), rel=1e-5, abs=1e-12)
        details = view.details.toPlainText()
        assert "Statistics" in details and "std" in details
        h = tv.hist_panel.histogram
        assert h is not None and h.counts.sum() == t.numel()
        show_tab(qtbot, tv, HEATMAP)
        assert tv.heat_panel.heatmap.image.size > 0
        show_tab(qtbot, tv, VALUES)
        model = tv.values_panel.model
        assert model.rowCount() * model.columnCount() >= 1
        tv.tabs.setCurrentIndex(HISTOGRAM)
    # the conv weight: a grid of kernels whose pixels are the weights
    tv, _ = select(qtbot, view, "conv1.weight")
    show_tab(qtbot, tv, HEATMAP)
    hm = tv.heat_panel.heatmap
    assert tv.heat_panel.kernels.isChecked() and hm.grid == (64, 3)
    w = sd["conv1.weight"].numpy()
    assert hm.image[0, 1] == pytest.approx(float(w[0, 0, 0, 1]))
    assert tv._describe_pixel(0, 1).startswith("[0, 0, 0, 1] = ")
    assert tv.hist_panel.histogram.counts.size == 42  # the Rice rule for 9,408 values
    # the user's bin count holds from then on
    tv.hist_panel.bins.setValue(7)
    qtbot.waitUntil(lambda: tv.hist_panel.histogram.counts.size == 7, timeout=WAIT)
    # the bias: a strip, and its values one per row
    tv, _ = select(qtbot, view, "bn1.bias")
    assert tv.hist_panel.histogram.counts.size == 7
    show_tab(qtbot, tv, HEATMAP)
    assert tv.heat_panel.heatmap.image.shape == (1, 64)
    model = tv.values_panel.model
    width = model.width  # wrapped into as many columns as fit
    assert (model.rowCount(), model.columnCount()) == (-(-64 // width), width)
    assert float(model.index(*divmod(5, width)).data()) == pytest.approx(
        float(sd["bn1.bias"][5]), rel=1e-5)
    # a second visit is served from the cache
    job_count = len(tv.analysis._stats)
    tv, stats = select(qtbot, view, "conv1.weight")
    assert tv._stats_job is None and len(tv.analysis._stats) == job_count


def _filled(panel):
    """How much of the plot's view the picture covers, across and down."""
    view = panel.plot.getViewBox().sceneBoundingRect()
    image = panel.image.sceneBoundingRect().intersected(view)
    return image.width() / view.width(), image.height() / view.height()


def test_heatmaps_fill_the_view_with_axes_that_say_what_they_are(qtbot, window,
                                                                 resnet_params):
    view = open_and_wait(qtbot, window, resnet_params[0])
    window.resize(1400, 860)
    tv, _ = select(qtbot, view, "conv1.weight")
    show_tab(qtbot, tv, HEATMAP)
    panel = tv.heat_panel
    qtbot.waitUntil(lambda: tv._heat_job is None, timeout=WAIT)
    qtbot.wait(300)  # a resize on the way lays the grid out again
    qtbot.waitUntil(lambda: tv._heat_job is None, timeout=WAIT)
    across, down = _filled(panel)
    assert max(across, down) > 0.95 and min(across, down) > 0.6, (across, down)
    assert "output channel" in panel.plot.getAxis("left").labelText
    assert "input channels 0–2" in panel.plot.getAxis("bottom").labelText
    assert panel.plot.getAxis("bottom")._tickLevels[0]  # ticked, in channels
    first = panel.heatmap.layout[0]
    # a narrower view: fewer output channels a row
    window.resize(700, 860)
    qtbot.waitUntil(lambda: panel.heatmap.layout[0] < first, timeout=WAIT)
    # a 1000×512 weight fills the plot, its axes in its own indices
    window.resize(1400, 860)
    tv, _ = select(qtbot, view, "fc.weight")
    show_tab(qtbot, tv, HEATMAP)
    qtbot.wait(50)
    across, down = _filled(panel)
    assert across > 0.98 and down > 0.98, (across, down)
    (x0, x1), (y0, y1) = panel.plot.getViewBox().viewRange()
    assert x0 >= -1 and x1 <= 513 and y0 >= -1 and y1 <= 1001
    assert panel.plot.getAxis("left").labelText == "dim 0 (0–999)"
    assert panel.plot.getAxis("bottom")._tickLevels is None  # the plot's own numbers


def test_a_vector_wraps_into_the_columns_that_fit(qtbot, window, resnet_params):
    view = open_and_wait(qtbot, window, resnet_params[0])
    window.resize(1400, 860)
    tv, _ = select(qtbot, view, "bn1.running_mean")
    show_tab(qtbot, tv, VALUES)
    panel = tv.values_panel
    qtbot.waitUntil(lambda: panel.model.width > 1, timeout=5000)
    table, model = panel.table, panel.model
    used = sum(table.columnWidth(c) for c in range(model.columnCount()))
    room = table.viewport().width()
    assert used <= room < used + 2 * table.columnWidth(0), (used, room)  # no more would fit
    assert model.width in (2, 4, 5, 8, 10, 20, 50, 100)
    assert f"{model.width} per row" in panel.note.text()
    want = resnet_params[1]["bn1.running_mean"]
    r, c = divmod(37, model.width)
    assert float(model.index(r, c).data()) == pytest.approx(float(want[37]), abs=1e-6)
    # a narrower panel: fewer columns
    wide = model.width
    window.resize(760, 860)
    qtbot.waitUntil(lambda: model.width < wide, timeout=5000)


def test_the_slice_controls_show_only_where_they_act(qtbot, window, resnet_params):
    view = open_and_wait(qtbot, window, resnet_params[0])
    tv, _ = select(qtbot, view, "conv1.weight")
    bar = tv.slice_bar
    assert tv.tabs.currentIndex() == HISTOGRAM and not bar.isVisible()  # counts everything
    show_tab(qtbot, tv, HEATMAP)
    assert tv.heat_panel.kernels.isChecked() and not bar.isVisible()  # a grid: all kernels
    tv.heat_panel.kernels.setChecked(False)
    assert bar.isVisible()  # two axes of the weight, the others at an index
    show_tab(qtbot, tv, VALUES)
    assert bar.isVisible()
    tabs_at = tv.tabs.mapTo(tv, tv.tabs.rect().topLeft()).y()
    tv.tabs.setCurrentIndex(HISTOGRAM)
    assert not bar.isVisible()
    qtbot.wait(20)  # laid out again: the tabs stay where they were, under the pointer
    assert tv.tabs.mapTo(tv, tv.tabs.rect().topLeft()).y() == tabs_at
    tv.tabs.setCurrentIndex(VALUES)
    tv, _ = select(qtbot, view, "bn1.bias")  # one axis: nothing to choose
    assert not bar.isVisible()
    assert not bar.sizePolicy().retainSizeWhenHidden()  # and no room kept for it
    tv, _ = select(qtbot, view, "fc.weight")
    assert bar.isVisible()


def test_reselecting_cancels_the_running_computation(qtbot, window, tmp_path, torch,
                                                     monkeypatch):
    path = tmp_path / "two.pt"
    torch.save({"big": torch.randn(1000, 1000), "small": torch.arange(10.0)}, path)
    started = []

    def slow(info, bins, cancel=None):  # the real computation, slowed down between chunks
        started.append(cancel)
        gen = compute(info)
        while True:
            try:
                p = next(gen)
            except StopIteration as end:
                stats = end.value
                break
            yield p
        for _ in range(400):
            time.sleep(0.01)
            if cancel.is_set():
                return None
            yield Progress("statistics", 1, 2)
        return stats, None

    monkeypatch.setattr(analysis_mod, "analyse", slow)
    view = open_and_wait(qtbot, window, path)
    tv = view.tensor_view
    view.tree.setCurrentIndex(find_row(view, "big"))
    big = tv.info
    qtbot.waitUntil(lambda: "%" in tv.status.text(), timeout=WAIT)
    job = tv._stats_job
    assert tv.cancel_button.isVisible()
    monkeypatch.setattr(analysis_mod, "analyse", _fast)
    _, stats = select(qtbot, view, "small")
    assert job.cancelled and started[0].is_set() and stats.max == 9.0
    assert tv.cached_stats(big) is None  # dropped, not applied
    assert "Statistics" in view.details.toPlainText() and "9" in view.details.toPlainText()
    # the Cancel button stops a computation too, and going back computes again
    view.tree.setCurrentIndex(find_row(view, "big"))
    qtbot.waitUntil(lambda: tv.cached_stats(big) is not None, timeout=WAIT)


def _fast(info, bins, cancel=None):
    stats = yield from compute(info)
    hist = yield from histogram(info, stats, bins)
    return stats, hist


def test_cancel_button(qtbot, window, tmp_path, torch, monkeypatch):
    path = tmp_path / "one.pt"
    torch.save({"t": torch.randn(100, 100)}, path)

    def endless(info, bins, cancel=None):
        while True:
            time.sleep(0.01)
            yield Progress("statistics", 1, 3)

    monkeypatch.setattr(analysis_mod, "analyse", endless)
    view = open_and_wait(qtbot, window, path)
    tv = view.tensor_view
    view.tree.setCurrentIndex(find_row(view, "t"))
    qtbot.waitUntil(lambda: "%" in tv.status.text(), timeout=WAIT)
    job = tv._stats_job
    tv.cancel_button.click()
    assert job.cancelled and tv.status.text() == "cancelled"
    assert not tv.cancel_button.isVisible()


def test_nan_and_inf_are_reported(qtbot, window, tmp_path, torch):
    t = torch.randn(64, 64)
    t[3, :] = float("nan")
    t[:, 5] = float("inf")
    path = tmp_path / "nan.pt"
    torch.save({"diverged": t}, path)
    view = open_and_wait(qtbot, window, path)
    tv, stats = select(qtbot, view, "diverged")
    assert (stats.nan, stats.posinf) == (63, 64)  # (3, 5) is inf, written last
    details = view.details.toPlainText()
    assert "NaN\n63" in details or "NaN 63" in details or "NaN\t63" in details, details
    note = tv.hist_panel.note.text()
    assert "not shown" in note and "63 NaN" in note and "64 +inf" in note
    assert tv.hist_panel.histogram.counts.sum() == 64 * 64 - 64 - 63
    show_tab(qtbot, tv, HEATMAP)
    assert "NaN" in tv.heat_panel.note.text() and "inf" in tv.heat_panel.note.text()
    assert tv.heat_panel.marks.image is not None


def test_slices_copy_and_npy(qtbot, window, tmp_path, torch, monkeypatch):
    t = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    path = tmp_path / "cube.pt"
    torch.save({"cube": t, "bf": torch.randn(5, 5).bfloat16()}, path)
    view = open_and_wait(qtbot, window, path)
    tv, _ = select(qtbot, view, "cube")
    show_tab(qtbot, tv, VALUES)
    model = tv.values_panel.model
    assert (model.rowCount(), model.columnCount()) == (3, 4)  # last two axes, dim 0 = 0
    tv.slice_bar.spins[0].setValue(1)
    qtbot.waitUntil(lambda: model.index(0, 0).data() == "12", timeout=5000)
    tv.slice_bar.rows.setCurrentIndex(0)  # rows: dim 0, columns: dim 2, dim 1 fixed
    qtbot.waitUntil(lambda: model.rowCount() == 2 and model.columnCount() == 4, timeout=5000)
    tv.slice_bar.spins[1].setValue(2)
    qtbot.waitUntil(lambda: model.index(1, 3).data() == str(int(t[1, 2, 3])), timeout=5000)
    # copy a block
    table = tv.values_panel.table
    sel = QItemSelection(model.index(0, 0), model.index(1, 1))
    table.selectionModel().select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect)
    text = tv.values_panel.copy()
    assert text == f"{int(t[0, 2, 0])}\t{int(t[0, 2, 1])}\n{int(t[1, 2, 0])}\t{int(t[1, 2, 1])}"
    assert QGuiApplication.clipboard().text() == text
    # save the whole tensor as .npy (bfloat16 saved as float32)
    tv, _ = select(qtbot, view, "bf")
    out = tmp_path / "bf"
    tv.save_npy_dialog(ask=lambda *a: (str(out), ""))
    qtbot.waitUntil(lambda: "saved" in tv.values_panel.note.text(), timeout=WAIT)
    saved = np.load(str(out) + ".npy")
    want = tensor_infos(path)["bf"]
    assert saved.dtype == np.float32 and saved.shape == tuple(want.shape)
    assert np.array_equal(saved, torch.load(path)["bf"].float().numpy())


def test_huge_values_table_is_lazy(qtbot, window, tmp_path, torch):
    t = torch.arange(5_000_000, dtype=torch.int32)
    path = tmp_path / "long.pt"
    torch.save({"ids": t}, path)
    view = open_and_wait(qtbot, window, path)
    tv, stats = select(qtbot, view, "ids")
    assert stats.max == 4_999_999 and stats.unique is None
    show_tab(qtbot, tv, VALUES)
    model = tv.values_panel.model
    start = time.perf_counter()
    tv.values_panel.table.scrollToBottom()
    QGuiApplication.processEvents()
    width = model.width
    assert model.rowCount() == -(-5_000_000 // width)
    assert model.index(*divmod(4_999_999, width)).data() == "4999999"
    assert time.perf_counter() - start < 5  # generous: a non-lazy model would take minutes


def test_very_long_vectors_wrap_into_rows(qtbot, window, tmp_path, torch, monkeypatch):
    """Qt's views add row heights in a 32-bit int: a vector of more rows wraps."""
    from ckpt_inspector.gui.tensor import values_table as values_table

    monkeypatch.setattr(values_table, "MAX_ROWS", 1_000_000)
    t = torch.arange(5_000_003, dtype=torch.int32)
    path = tmp_path / "longer.pt"
    torch.save({"ids": t}, path)
    view = open_and_wait(qtbot, window, path)
    tv, _ = select(qtbot, view, "ids")
    show_tab(qtbot, tv, VALUES)
    model = tv.values_panel.model
    width = model.width  # at least 10: 5,000,003 rows of 1 would pass MAX_ROWS
    assert width % 10 == 0
    assert (model.rowCount(), model.columnCount()) == (-(-5_000_003 // width), width)
    assert model.index(*divmod(1234, width)).data() == "1234"
    assert model.index(*divmod(5_000_002, width)).data() == "5000002"
    assert model.index(5_000_003 // width, 5_000_003 % width).data() is None  # past the end
    assert model.headerData(123, Qt.Orientation.Vertical) == f"{123 * width:,}"
    assert model.headerData(4, Qt.Orientation.Horizontal) == "+4"
    assert f"{width} per row" in tv.values_panel.note.text()


def test_statistics_on_a_torch_device_run_in_a_child(qtbot, window, resnet_params, torch):
    """A device other than cpu goes to `ckpt-inspector stats --device` (torch's reductions);
    cpu:0 exercises that path on a machine without a GPU."""
    path, sd = resnet_params
    view = open_and_wait(qtbot, window, path)
    view.set_target_device("cpu:0")
    tv, stats = select(qtbot, view, "fc.weight")
    assert stats.device == "cpu:0" and "on cpu:0" in view.details.toPlainText()
    t = sd["fc.weight"].double()
    assert stats.std == pytest.approx(float(t.std(unbiased=False)), rel=1e-9)
    assert tv.hist_panel.histogram.counts.sum() == t.numel()
    assert math.isfinite(stats.l2)
