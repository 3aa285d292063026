"""The comparison as rows (core/ops/difftree.py): grouping, totals, statuses."""

from __future__ import annotations

import math

from _trees import tensor

from ckpt_inspector.core.ops.diff import (
    CHANGED,
    IDENTICAL,
    ONLY_A,
    SHAPE,
    STATUSES,
    Entry,
    Numbers,
    Side,
)
from ckpt_inspector.core.ops.difftree import (
    RANK,
    SEVERITY,
    STATUS_HELP,
    build_tree,
    difference_score,
    side_text,
    status_text,
)


def entry(key: str, status: str = IDENTICAL, numbers: Numbers | None = None) -> Entry:
    side = Side(key, tensor(key))
    return Entry(key, status, side, None if status == ONLY_A else side, numbers)


def test_every_status_has_a_rank_and_words():
    assert set(SEVERITY) == set(STATUSES) == set(STATUS_HELP)
    assert RANK[SHAPE] < RANK[ONLY_A] < RANK[CHANGED] < RANK[IDENTICAL]


def test_grouped_rows_roll_up_the_worst_and_the_extremes():
    entries = [
        entry("layer.0.weight", CHANGED, Numbers(6, changed=2, max_abs=0.5, rel_l2=0.1,
                                                 cosine=0.9)),
        entry("layer.0.bias", CHANGED, Numbers(3, changed=1, max_abs=2.0, rel_l2=0.01,
                                               cosine=0.99)),
        entry("layer.1.weight", ONLY_A),
        entry("fc.weight"),
    ]
    top = build_tree(entries, grouped=True)
    layer, fc = top.children
    assert (layer.label, layer.key, layer.entry) == ("layer", "layer", None)
    assert (layer.entries, layer.changed, layer.elements_changed) == (3, 3, 3)
    assert layer.worst == ONLY_A and layer.max_abs == 2.0 and layer.cosine == 0.9
    assert layer.score == math.inf  # a key missing on one side sorts above every number
    assert layer.children[0].rel_l2 == 0.1
    assert (fc.entries, fc.changed, fc.worst) == (1, 0, IDENTICAL)
    assert top.entries == 4 and top.worst == ONLY_A
    assert status_text(layer) == "3 of 3 changed" and status_text(fc) == "1 identical"
    assert status_text(fc.children[0]) == IDENTICAL


def test_flat_rows_keep_the_comparisons_order():
    top = build_tree([entry("b.x"), entry("a"), entry("")], grouped=False)
    assert [(d.label, d.key) for d in top.children] == [("b.x", "b.x"), ("a", "a"),
                                                        ("(root)", "")]
    assert status_text(top) == "3 identical"


def test_a_key_and_the_keys_below_it_are_one_row():
    for keys in (["x", "x.y"], ["x.y", "x"]):
        top = build_tree([entry(k) for k in keys], grouped=True)
        assert [d.key for d in top.children] == ["x"]
        x = top.children[0]
        assert x.entry is not None and x.entry.key == "x" and x.entries == 2
        assert [d.key for d in x.children] == ["x.y"]


def test_scores_and_side_text():
    assert difference_score(entry("a")) == 0.0
    assert difference_score(entry("a", SHAPE)) == math.inf
    assert side_text(None) == "—"
    assert side_text(Side("a", tensor("a", (2, 3), "float16"))) == "float16[2,3]"
