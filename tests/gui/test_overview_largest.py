"""The overview's largest tensors: right on any tree, and found without walking every row
of a large one (it runs on the window's thread when a file is shown)."""

from __future__ import annotations

import heapq
import itertools
import random

import pytest

from ckpt_inspector.core.display import build_display_tree
from ckpt_inspector.core.tree import Node, TensorInfo
from ckpt_inspector.gui.html import overview


def state_dict(sizes: list[int], key) -> Node:
    root = Node("dict", None, "collections.OrderedDict")
    for i, n in enumerate(sizes):
        root.add(Node("tensor", key(i), "torch.Tensor", tensor=TensorInfo("float32", (n,))))
    return root


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("grouped", [True, False])
def test_the_largest_by_bytes_ties_in_the_trees_order(seed, grouped):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 40) for _ in range(2000)]
    root = state_dict(sizes, lambda i: f"m.l{i % 37}.s{i % 11}.w{i}")
    got = overview.largest_tensors(build_display_tree(root, grouped=grouped), 10)
    assert [d.node.tensor.nbytes for d in got] == [4 * n for n in sorted(sizes, reverse=True)[:10]]
    order = {c.key: i for i, c in enumerate(root.children)}
    for a, b in itertools.pairwise(got):  # equal sizes: in the tree's order
        if a.node.tensor.nbytes == b.node.tensor.nbytes and not grouped:
            assert order[a.key] < order[b.key]


def test_100000_equal_tensors_are_not_all_visited(monkeypatch):
    """10,000 modules of 10 equal tensors: the first ten in the file's order, after opening
    one branch (the old walk pushed every one of the 110,000 rows)."""
    root = state_dict([4] * 100_000, lambda i: f"model.layers.{i // 10}.sub{i % 10}.weight")
    top = build_display_tree(root, grouped=True)
    pushed = []

    class Counting:
        @staticmethod
        def heappush(heap, item):
            pushed.append(1)
            heapq.heappush(heap, item)

        heappop = staticmethod(heapq.heappop)

    monkeypatch.setattr(overview, "heapq", Counting)
    got = overview.largest_tensors(top, 10)
    assert [d.key for d in got] == [f"model.layers.0.sub{i}.weight" for i in range(10)]
    assert len(pushed) < 10_100, len(pushed)
