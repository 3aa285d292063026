"""Checkpoints made of many files in the window, part by part: a tensor saved in pieces (its
pieces listed, its statistics, histogram, heatmap, values and .npy stitched from them), and one
shard opened on its own (a bar offers the whole model)."""

from __future__ import annotations

import socket

import dcp_files
import numpy as np
import pytest

from ckpt_inspector.gui.html.checkpoint import pieces_html
from ckpt_inspector.gui.tensor.view import HEATMAP, VALUES
from ckpt_inspector.gui.whole_model_bar import WholeModelBar

from shards import save_sharded, state_dict
from support import find_row, open_and_wait

WAIT = 60_000


@pytest.fixture(scope="module")
def two_ranks(torch, tmp_path_factory):
    root = tmp_path_factory.mktemp("dcp-gui")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dcp_files.save_two_ranks(root / "ckpt", port)
    return root / "ckpt", dcp_files.consolidated(torch, root / "ckpt", root / "all.pt")


def _select(qtbot, view, key):
    view.tree.setCurrentIndex(find_row(view, key))
    tv = view.tensor_view
    info = tv.info
    qtbot.waitUntil(lambda: tv.cached_stats(info) is not None, timeout=WAIT)
    qtbot.waitUntil(lambda: tv._stats_job is None
                    and tv.hist_panel.histogram is not None, timeout=WAIT)
    return tv, tv.cached_stats(info)


def test_a_tensor_in_pieces(qtbot, window, torch, two_ranks, tmp_path):
    folder, reference = two_ranks
    view = open_and_wait(qtbot, window, folder)
    for key in ("model.w", "model.b", "model.v"):
        want = reference[key].double().numpy()
        tv, stats = _select(qtbot, view, key)
        details = view.details.toPlainText().replace("\u200b", "")
        assert "Pieces (2)" in details and "2 pieces, 2 files" in details
        assert "__0_0.distcp" in details and "__1_0.distcp" in details
        assert stats.numel == want.size and stats.mean == pytest.approx(want.mean())
        assert tv.hist_panel.histogram.counts.sum() == want.size
        tv.tabs.setCurrentIndex(HEATMAP)
        qtbot.waitUntil(lambda tv=tv: tv._heat_job is None
                        and tv.heat_panel.heatmap is not None, timeout=WAIT)
        tv.tabs.setCurrentIndex(VALUES)
        model = tv.values_panel.model
        if model.width > 1:  # a vector, wrapped into the columns that fit
            last, value = divmod(want.size - 1, model.width), want.flat[-1]
        else:
            last = (model.rowCount() - 1, model.columnCount() - 1)
            value = want.reshape(model.rowCount(), -1)[last]
        assert float(model.index(*last).data()) == pytest.approx(float(value), rel=1e-2)
    # the heatmap of the row-sharded matrix is the whole matrix, rows from both ranks
    tv, _ = _select(qtbot, view, "model.w")
    tv.tabs.setCurrentIndex(HEATMAP)
    qtbot.waitUntil(lambda: tv._heat_job is None and tv.heat_panel.heatmap is not None
                    and tv.heat_panel.heatmap.image.shape == (7, 5), timeout=WAIT)
    assert np.array_equal(tv.heat_panel.heatmap.image, reference["model.w"].numpy())
    out = tmp_path / "w.npy"
    tv.save_npy_dialog(ask=lambda *a: (str(out), ""))
    qtbot.waitUntil(out.exists, timeout=WAIT)  # written aside, then renamed: whole
    assert np.array_equal(np.load(out), reference["model.w"].numpy())
    # a tensor in one piece names its file, with no pieces table
    view.tree.setCurrentIndex(find_row(view, "model.replicated"))
    details = view.details.toPlainText()
    assert "Pieces" not in details and ".distcp" in details


def test_many_pieces_are_capped():
    pieces = [{"file": f"__{i}_0.distcp", "offsets": [i * 4, 0], "shape": [4, 8]}
              for i in range(40)]
    html = pieces_html(pieces).replace("\u200b", "")
    assert "Pieces (40)" in html and "and 24 more" in html
    assert "__15_0.distcp" in html and "__16_0.distcp" not in html
    assert "[60, 0]" in html and pieces_html([]) == ""
    # a ZeRO partition: a run of the flattened tensor
    html = pieces_html([{"file": "global_step3/zero_pp_rank_1_mp_rank_00_optim_states.pt",
                         "group": 0, "offset": 11, "numel": 17, "at": 18}]).replace("\u200b", "")
    assert "at element 18 · 17 elements" in html
    assert "in global_step3/</span>" in html and ">zero_pp_rank_1_mp" in html


def test_one_shard_offers_the_whole_model(qtbot, window, torch, tmp_path):
    folder = tmp_path / "sharded"
    weight_map = save_sharded(torch, folder, state_dict(torch), "safetensors", shards=3)
    shard = sorted(set(weight_map.values()))[1]
    view = open_and_wait(qtbot, window, folder / shard)
    qtbot.waitUntil(lambda: view.findChild(WholeModelBar) is not None, timeout=WAIT)
    bar = view.findChild(WholeModelBar)
    assert bar.isVisible()
    assert "is shard 2 of 3 of a sharded model" in bar.label.text()
    assert bar.button.text() == "Open the whole model"
    with qtbot.waitSignal(window.file_shown, timeout=WAIT):
        bar.button.click()
    assert window.current_view().path == str(folder)
    assert window.tabs.count() == 2
    assert window.current_view().findChild(WholeModelBar) is None  # the whole has no bar
    bar.button.click()  # already open: its tab comes forward
    assert window.tabs.count() == 2


def test_a_late_answer_for_a_closed_tab_is_dropped(qtbot, window, torch, tmp_path,
                                                   monkeypatch):
    import time

    from ckpt_inspector.gui import whole_model_bar

    folder = tmp_path / "sharded"
    weight_map = save_sharded(torch, folder, state_dict(torch), "safetensors", shards=3)
    slow = whole_model_bar.whole_model_for
    monkeypatch.setattr(whole_model_bar, "whole_model_for",
                        lambda p: (time.sleep(0.5), slow(p))[1])
    [view] = window.open_paths([str(folder / sorted(set(weight_map.values()))[0])])
    window.close_tab(window.tabs.indexOf(view))
    qtbot.wait(1000)
    assert window.tabs.count() == 0


def test_a_file_complete_by_itself_has_no_bar(qtbot, window, torch, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model-00001-of-00001.safetensors"
    save_file({"w": torch.ones(2)}, path)
    view = open_and_wait(qtbot, window, path)
    qtbot.wait(300)
    assert view.findChild(WholeModelBar) is None


def test_a_zero_partitioned_tensor(qtbot, window, torch, tmp_path):
    import zero_files

    folder = zero_files.save(torch, tmp_path / "zero", 3, 2)
    want = zero_files.expected(torch)["layer.weight"].double().numpy()
    view = open_and_wait(qtbot, window, folder)
    tv, stats = _select(qtbot, view, "layer.weight")
    details = view.details.toPlainText().replace("\u200b", "")
    assert "Pieces (2) in global_step3/" in details and "at element 18" in details
    assert stats.mean == pytest.approx(want.mean())
    tv.tabs.setCurrentIndex(HEATMAP)
    qtbot.waitUntil(lambda: tv._heat_job is None and tv.heat_panel.heatmap is not None,
                    timeout=WAIT)
    assert np.allclose(tv.heat_panel.heatmap.image, want)
    # one rank's file opened alone points at its tag folder
    rank = next((folder / "global_step3").glob("*_model_states.pt"))
    alone = open_and_wait(qtbot, window, rank)
    qtbot.waitUntil(lambda: alone.findChild(WholeModelBar) is not None, timeout=WAIT)
    bar = alone.findChild(WholeModelBar)
    assert "of a DeepSpeed checkpoint" in bar.label.text()
    assert bar.button.text() == "Open the whole checkpoint"
