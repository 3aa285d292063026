"""A LoRA adapter in the window: the summary's Adapter section, the details of a pair, and
the tensor view's "Effective update" (scale · B @ A, computed only when asked)."""

from __future__ import annotations

import numpy as np
import pytest

from ckpt_inspector.core.ops.stats import Stats
from ckpt_inspector.gui.tensor.view import HEATMAP, VALUES

from adapter_files import PREFIX, expected_peft, peft_by_hand, update_of
from support import find_row, open_and_wait

WAIT = 60_000
Q = PREFIX + "model.layers.1.self_attn.q_proj"


@pytest.fixture()
def adapter_dir(torch, tmp_path):
    folder = tmp_path / "my-adapter"
    return folder, peft_by_hand(torch, folder)


def _update_shown(qtbot, tv):
    """Wait until the tensor view shows an update with its statistics."""
    qtbot.waitUntil(lambda: tv.info is not None and tv.info.storage.source.__class__.__name__
                    == "UpdateData" and isinstance(tv.analysis.stats(tv.info), Stats),
                    timeout=WAIT)
    qtbot.waitUntil(lambda: tv._stats_job is None, timeout=WAIT)
    return tv.info, tv.analysis.stats(tv.info)


def test_summary_details_and_the_effective_update(qtbot, window, adapter_dir):
    folder, arrays = adapter_dir
    view = open_and_wait(qtbot, window, folder)
    summary = view.summary.toPlainText().replace("\u200b", "")
    assert "peft-adapter" in summary and "Adapter" in summary
    assert "toy/base-model" in summary and "4 (7), 2 (1)" in summary  # ranks
    assert "(after base_model.model.model.)" in summary
    assert "layers.0–2.self_attn.v_proj ×3" in summary
    assert "adapter_config.json" in summary and "rank_pattern" in summary  # the config
    tv = view.tensor_view
    button = tv.lora.button

    # a tensor that is no LoRA half: no button
    view.tree.setCurrentIndex(find_row(view, PREFIX + "lm_head.weight"))
    assert button.isHidden()
    # lora_A of a pair: the pair in the details, the button offered, nothing computed
    view.tree.setCurrentIndex(find_row(view, Q + ".lora_A.weight"))
    details = view.details.toPlainText().replace("\u200b", "")
    assert "LoRA pair" in details and Q + ".lora_B.weight" in details
    assert "alpha\n8 (lora_alpha)\nscale\n4\n" in details
    assert not button.isHidden() and button.isEnabled() and not button.isChecked()
    adapter = view.file.adapter
    module = adapter.module_named(Q)
    assert not adapter.update_tensor(module).storage.source.ready

    button.click()
    info, stats = _update_shown(qtbot, tv)
    rank, _alpha, scale = expected_peft()[Q]
    ref = update_of(arrays, Q, scale)
    assert rank == 2 and info.shape == ref.shape and tv.key == f"4·B@A of {Q}"
    assert stats.std == pytest.approx(ref.std(), rel=1e-5)
    assert stats.mean == pytest.approx(ref.mean(), abs=1e-5 * np.abs(ref).max())
    assert tv.hist_panel.histogram.counts.sum() == ref.size
    qtbot.waitUntil(lambda: "Effective update" in view.details.toPlainText(), timeout=WAIT)
    tv.tabs.setCurrentIndex(HEATMAP)
    qtbot.waitUntil(lambda: tv._heat_job is None and tv.heat_panel.heatmap is not None,
                    timeout=WAIT)
    tv.tabs.setCurrentIndex(VALUES)
    model = tv.values_panel.model
    qtbot.waitUntil(lambda: model.rowCount() == ref.shape[0], timeout=5000)
    assert float(model.index(3, 5).data()) == pytest.approx(ref[3, 5], rel=1e-4, abs=1e-5)

    # the button stays pressed: lora_B of another pair shows that pair's update
    other = PREFIX + "model.conv"
    view.tree.setCurrentIndex(find_row(view, other + ".lora_B.weight"))
    info, stats = _update_shown(qtbot, tv)
    assert info.shape == (6, 3, 3, 3)
    assert stats.l2 == pytest.approx(np.linalg.norm(update_of(arrays, other, 2.0)), rel=1e-5)
    # released: the tensor itself again
    button.click()
    assert tv.info is view.current_node().node.tensor


def test_update_statistics_on_a_device_run_in_a_child(qtbot, window, adapter_dir):
    """Another device sends the update to ``stats --lora-update --device`` (cpu:0 takes
    that path on a machine without a GPU)."""
    folder, arrays = adapter_dir
    view = open_and_wait(qtbot, window, folder)
    view.set_target_device("cpu:0")
    tv = view.tensor_view
    view.tree.setCurrentIndex(find_row(view, Q + ".lora_B.weight"))
    tv.lora.button.click()
    _info, stats = _update_shown(qtbot, tv)
    assert stats.device == "cpu:0"
    ref = update_of(arrays, Q, expected_peft()[Q][2])
    assert stats.std == pytest.approx(ref.std(), rel=1e-5)


def test_a_lora_file_without_pairs_problem(qtbot, window, torch, tmp_path):
    """A pair whose shapes do not fit: the button is there, disabled, saying why."""
    from safetensors.torch import save_file

    save_file({"m.lora_A.weight": torch.ones(2, 8), "m.lora_B.weight": torch.ones(8, 3)},
              str(tmp_path / "bad.safetensors"))
    view = open_and_wait(qtbot, window, tmp_path / "bad.safetensors")
    assert "Adapter" in view.summary.toPlainText()
    view.tree.setCurrentIndex(find_row(view, "m.lora_A.weight"))
    button = view.tensor_view.lora.button
    assert not button.isHidden() and not button.isEnabled()
    assert "do not make a pair" in button.toolTip()
