"""The key tree's filter syntax (core/query.py)."""

from __future__ import annotations

import pytest
from _trees import state_dict, tensor

from ckpt_inspector.core.display import build_display_tree
from ckpt_inspector.core.query import QueryError, matching, parse, visible_ids


@pytest.fixture
def top():
    root = state_dict(
        tensor("model.layer1.0.conv1.weight", (64, 3, 7, 7)),
        tensor("model.layer4.0.conv1.weight", (768, 768), "bfloat16", device="cuda:0"),
        tensor("model.bn.running_mean", (64,), role="buffer"),
        tensor("model.fc.bias", (), "int8"),
    )
    return build_display_tree(root)


def keys(top, text: str) -> list[str]:
    return [d.key for d in matching(top, parse(text)) if d.is_tensor]


def test_terms(top):
    assert keys(top, "conv1") == ["model.layer1.0.conv1.weight", "model.layer4.0.conv1.weight"]
    assert keys(top, "CONV1 layer4") == ["model.layer4.0.conv1.weight"]
    assert keys(top, "re:^layer4") == ["model.layer4.0.conv1.weight"]
    assert keys(top, "/^layer[14]\\.0/") == ["model.layer1.0.conv1.weight",
                                              "model.layer4.0.conv1.weight"]
    assert keys(top, "shape:768x768") == ["model.layer4.0.conv1.weight"]
    assert keys(top, "shape:*x3x*x7") == ["model.layer1.0.conv1.weight"]
    assert keys(top, "shape:[]") == ["model.fc.bias"]
    assert keys(top, "dtype:bf16") == ["model.layer4.0.conv1.weight"]
    assert keys(top, "dtype:int8") == ["model.fc.bias"]
    assert keys(top, "device:cuda") == ["model.layer4.0.conv1.weight"]
    assert keys(top, "role:buffer") == ["model.bn.running_mean"]
    assert parse("").empty and not parse("x").empty


def test_trailing_and_leading_dimensions_match_with_a_run_of_any_dims():
    root = state_dict(
        tensor("conv1.weight", (64, 3, 7, 7)),
        tensor("layer1.conv.weight", (64, 64, 3, 3)),
        tensor("layer2.conv.weight", (128, 64, 3, 3)),
        tensor("grouped.weight", (8, 1, 1, 3, 3)),
        tensor("fc.weight", (3, 3)),
        tensor("proj.weight", (64, 3, 3, 1)),
        tensor("bn.weight", (64,)),
    )
    top = build_display_tree(root)
    kernels = ["layer1.conv.weight", "layer2.conv.weight", "grouped.weight", "fc.weight"]
    for spec in ("**x3x3", "…x3x3", "...x3x3", "[**,3,3]", "**x**x3x3"):
        assert keys(top, f"shape:{spec}") == kernels, spec
    assert keys(top, "shape:*x3x3") == []  # one * is one dimension, as before
    assert keys(top, "shape:*x*x3x3") == ["layer1.conv.weight", "layer2.conv.weight"]
    assert keys(top, "shape:64x**") == ["conv1.weight", "layer1.conv.weight",
                                        "proj.weight", "bn.weight"]
    assert keys(top, "shape:64x**x1") == ["proj.weight"]
    assert keys(top, "shape:**x64x**") == ["conv1.weight", "layer1.conv.weight",
                                           "layer2.conv.weight", "proj.weight", "bn.weight"]
    assert keys(top, "shape:**x*x3x3") == kernels[:3]  # at least three dimensions
    assert len(keys(top, "shape:**")) == 7


def test_errors():
    with pytest.raises(QueryError):
        parse("re:[")
    with pytest.raises(QueryError):
        parse("shape:axb")


def test_visible_rows_are_matches_their_ancestors_and_descendants(top):
    matches = matching(top, parse("re:^layer1$"))
    assert [d.key for d in matches] == ["model.layer1"]
    visible = visible_ids(matches)
    shown = sorted(d.key for d in top.walk() if id(d) in visible)
    assert shown == ["", "model", "model.layer1", "model.layer1.0", "model.layer1.0.conv1",
                     "model.layer1.0.conv1.weight"]
