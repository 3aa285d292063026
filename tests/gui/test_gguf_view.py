"""A GGUF file in the window: statistics, histogram, heatmap and values of quantized tensors
(dequantized by the core a piece at a time), offscreen."""

from __future__ import annotations

import numpy as np
import pytest

from ckpt_inspector.gui.tensor.view import HEATMAP, VALUES

from gguf_files import write_gguf
from support import find_row, open_and_wait

WAIT = 60_000


def test_quantized_tensors_in_the_window(qtbot, window, tmp_path):
    gguf = pytest.importorskip("gguf")
    path = write_gguf(tmp_path / "tiny.gguf")
    reader = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    view = open_and_wait(qtbot, window, path)
    for key in ("blk.1.ffn_down.weight", "blk.0.attn_q.weight", "token_embd.weight"):
        view.tree.setCurrentIndex(find_row(view, key))
        tv = view.tensor_view
        info = tv.info
        qtbot.waitUntil(lambda tv=tv, info=info: tv.cached_stats(info) is not None,
                        timeout=WAIT)
        qtbot.waitUntil(lambda tv=tv: tv._stats_job is None, timeout=WAIT)
        t = reader[key]
        ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64)
        assert tv.cached_stats(info).mean == pytest.approx(ref.mean())
        qtbot.waitUntil(lambda tv=tv: tv.hist_panel.histogram is not None, timeout=WAIT)
        assert tv.hist_panel.histogram.counts.sum() == ref.size
        tv.tabs.setCurrentIndex(HEATMAP)
        qtbot.waitUntil(lambda tv=tv: tv._heat_job is None
                        and tv.heat_panel.heatmap is not None, timeout=WAIT)
        assert tv.heat_panel.heatmap.image.size > 0
        tv.tabs.setCurrentIndex(VALUES)
        model = tv.values_panel.model
        assert model.rowCount() >= 1
        first = ref.reshape(-1, ref.shape[-1])[0, 0] if ref.ndim > 1 else ref[0]
        assert float(model.index(0, 0).data()) == pytest.approx(first, rel=1e-3, abs=1e-6)
        out = tmp_path / f"{key}.npy"
        tv.save_npy_dialog(ask=lambda *a, out=out: (str(out), ""))
        qtbot.waitUntil(out.exists, timeout=WAIT)  # written aside, then renamed: whole
        assert np.array_equal(np.load(out), ref.reshape(info.shape).astype(np.float32))
