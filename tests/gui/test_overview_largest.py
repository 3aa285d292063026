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


def _every_child_pushed(top, n):
    """The walk before it skipped children: every child of an opened group pushed."""
    out, heap, count = [], [], 0

    def push(d):
        nonlocal count
        if d.is_tensor:
            heapq.heappush(heap, (-d.node.tensor.nbytes, 0, -count, d))
            count += 1
        if d.children and d.tensors > d.is_tensor:
            heapq.heappush(heap, (-d.largest, 1, -count, d))
            count += 1

    push(top)
    while heap and len(out) < n:
        _b, below, _o, d = heapq.heappop(heap)
        if not below:
            out.append(d)
            continue
        for child in reversed(d.children):
            push(child)
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("grouped", [True, False])
def test_only_contenders_are_opened_and_the_answer_is_the_same(seed, grouped):
    """Groups of many children (only the few that can hold a winner are pushed): the same
    rows in the same order as pushing them all, ties included."""
    rng = random.Random(seed)
    sizes = [rng.choice([1, 2, 2, 3, 8]) for _ in range(6000)]
    fanout = rng.choice([50, 300, 3000])
    root = state_dict(sizes, lambda i: f"m.l{i % fanout}.s{i % 7}.w{i}")
    top = build_display_tree(root, grouped=grouped)
    for n in (1, 3, 10, 25):
        assert overview.largest_tensors(top, n) == _every_child_pushed(top, n)


def test_a_module_of_20000_layers_is_not_pushed(monkeypatch):
    """One module holding 20,000 layers: its few contenders are pushed, not every layer."""
    root = state_dict([4] * 200_000 + [8], lambda i: f"model.layers.{i // 10}.w{i % 10}")
    top = build_display_tree(root, grouped=True)
    pushed = []
    real = heapq.heappush
    monkeypatch.setattr(overview.heapq, "heappush",
                        lambda heap, item: pushed.append(1) or real(heap, item))
    got = overview.largest_tensors(top, 10)
    assert got[0].key == "model.layers.20000.w0"
    assert [d.key for d in got[1:]] == [f"model.layers.0.w{i}" for i in range(9)]
    assert len(pushed) < 1000, len(pushed)


@pytest.mark.parametrize("seed", range(4))
def test_tensor_and_group_siblings_of_equal_size(seed):
    """A tensor row and a group row of equal size side by side (the walk takes the tensor
    first): the same answer as pushing every child, however many children a group has."""
    rng = random.Random(seed)
    sizes = []
    keys = []
    for i in range(rng.randint(60, 400)):
        if rng.random() < 0.5:
            keys.append(f"m.g{i}.w")
        else:
            keys.append(f"m.t{i}")
        sizes.append(rng.choice([4, 4, 1]))
    root = state_dict(sizes, lambda i: keys[i])
    top = build_display_tree(root, grouped=True)
    for n in (1, 3, 10):
        assert overview.largest_tensors(top, n) == _every_child_pushed(top, n)
    # the case a review found: the later tensor of equal size comes before the groups
    root = state_dict([16] + [1] * 50 + [16], lambda i: "m.a.w" if i == 0 else
                      ("m.z" if i == 51 else f"m.f{i}"))
    top = build_display_tree(root, grouped=True)
    assert [d.key for d in overview.largest_tensors(top, 1)] == \
        [d.key for d in _every_child_pushed(top, 1)] == ["m.z"]
