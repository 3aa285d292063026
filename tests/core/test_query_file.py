"""The ``file:`` term of the key tree's filter (core/query.py)."""

from __future__ import annotations

from _trees import state_dict, tensor

from ckpt_inspector.core.display import build_display_tree
from ckpt_inspector.core.query import matching, parse


def test_file_term_matches_the_tensors_file():
    top = build_display_tree(state_dict(
        tensor("model.a.weight", file="model-00001-of-00002.safetensors"),
        tensor("model.b.weight", file="model-00002-of-00002.safetensors"),
        tensor("model.c.weight")))
    found = [d.key for d in matching(top, parse("file:model-00002")) if d.is_tensor]
    assert found == ["model.b.weight"]
    assert [d.key for d in matching(top, parse("FILE:Model- a")) if d.is_tensor] == \
        ["model.a.weight"]
    assert not matching(top, parse("file:x.bin"))
