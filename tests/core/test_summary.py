"""Totals and plain-data descriptions (core/summary.py)."""

from __future__ import annotations

import math

from _trees import state_dict, tensor

from ckpt_inspector.core.summary import (
    format_value,
    human_bytes,
    human_count,
    jsonable,
    subtree_totals,
    top_values,
    totals,
)
from ckpt_inspector.core.tree import Checkpoint, Node


def test_human_units():
    assert human_bytes(12) == "12 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 1024 ** 3) == "3.0 GiB"
    # a size a hostile header claims is too large for a float: worded, not an OverflowError
    assert human_bytes(10 ** 400) == "about 10^400 B"
    assert human_count(999) == "999" and human_count(1_500_000) == "1.5M"


def test_jsonable():
    assert jsonable(math.nan) == "nan" and jsonable(2 ** 70) == str(2 ** 70)
    assert jsonable(b"abc") == "<3 bytes>"
    assert jsonable(list(range(3)), limit=2) == [0, 1, "… 1 more"]
    assert jsonable({1: (1.5, None)}) == {"1": [1.5, None]}


def test_format_value():
    assert format_value(Node("none", "x")) == "None"
    assert format_value(Node("scalar", "x", "int", value=7)) == "7"
    assert format_value(Node("str", "x", "str", value="adam")) == "'adam'"


def test_totals_and_subtree_totals():
    root = state_dict(tensor("a.w", (2, 3)), tensor("a.b", (3,), "float16", device="cuda:0"),
                      Node("scalar", "epoch", "int", value=3))
    ckpt = Checkpoint("x.pt", "torch-zip", root)
    t = totals(ckpt)
    assert (t["tensors"], t["numel"], t["nbytes"]) == (2, 9, 30)
    assert t["by_dtype"] == {"float32": {"tensors": 1, "numel": 6, "nbytes": 24},
                             "float16": {"tensors": 1, "numel": 3, "nbytes": 6}}
    assert t["devices"] == {"cpu": 1, "cuda:0": 1} and t["damaged_tensors"] == 0
    sums = subtree_totals(root)
    assert sums[id(root)] == (2, 9, 30)
    assert sums[id(root.children[2])] == (0, 0, 0)
    values, count = top_values(root)
    assert [k for k, _n in values] == ["epoch"] and count == 1
