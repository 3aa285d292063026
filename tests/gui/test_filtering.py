"""A large key tree is filtered a slice at a time on the GUI thread (gui/tree/filtering.py):
the same rows as the filter of core/query.py, whether run at once or in slices."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from _trees import state_dict, tensor

from ckpt_inspector.core.display import build_display_tree
from ckpt_inspector.core.query import matching, parse, visible_ids
from ckpt_inspector.gui.tree import filtering


@pytest.fixture
def top():
    keys = [f"model.layers.{i // 10}.sub{i % 10}.weight" for i in range(3000)]
    keys += ["model.layers.3", "model.norm.weight"]
    return build_display_tree(state_dict(*(tensor(k, (4, 2)) for k in keys)))


@pytest.mark.parametrize("text", ["sub3", "layers.3", "re:^norm", "shape:4x2 sub1", "nothing"])
def test_sliced_filter_shows_what_the_query_shows(qtbot, monkeypatch, top, text):
    q = parse(text)
    matches = matching(top, q)
    expected = (visible_ids(matches), len(matches), sum(1 for m in matches if m.is_tensor))
    assert filtering.match_now(top, q) == expected
    monkeypatch.setattr(filtering, "SLICE_S", 0.0)  # one step a turn: many turns
    matcher = filtering.SlicedMatcher()
    with qtbot.waitSignal(matcher.done, timeout=10_000) as blocker:
        matcher.start(top, q)
    assert blocker.args[0] == expected
    assert not matcher.running
