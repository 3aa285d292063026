"""The one node base, the one rule that groups dotted keys, the one roll-up."""

from __future__ import annotations

from dataclasses import dataclass

from ckpt_inspector.core.display import DisplayNode
from ckpt_inspector.core.keytree import DottedKeys, KeyRow, TreeNode, natural_key, roll_up
from ckpt_inspector.core.ops.difftree import DiffNode
from ckpt_inspector.core.tree import Node


@dataclass(eq=False, slots=True)
class Row(KeyRow):
    value: int = 0
    total: int = 0

    def tally(self) -> None:
        self.total = self.value + sum(c.total for c in self.children)


def place_all(keys: list[str]) -> Row:
    top = Row("", "")
    rows = DottedKeys(Row)
    for i, key in enumerate(keys, 1):
        rows.place(top, key.split("."), taken=lambda r: r.value != 0).value = i
    roll_up(top)
    return top


def shape(row: Row) -> list:
    return [(c.label, c.key, c.value, shape(c)) for c in row.children]


def test_every_tree_shares_the_base():
    for cls in (Node, DisplayNode, DiffNode):
        assert issubclass(cls, TreeNode)
    for cls in (DisplayNode, DiffNode):
        assert issubclass(cls, KeyRow)


def test_add_sets_parent_row_and_order_and_walk_is_depth_first():
    top = Row("", "")
    a = top.add(Row("a", "a"))
    b = top.add(Row("b", "b"))
    c = a.add(Row("c", "a.c"))
    assert (a.row, b.row, c.row, b.order) == (0, 1, 0, 1)
    assert c.parent is a and a.parent is top
    assert [n.label for n in top.walk()] == ["", "a", "c", "b"]


def test_a_deep_tree_walks_without_recursion():
    node = top = Row("", "")
    for i in range(50_000):
        node = node.add(Row(str(i), str(i)))
    assert sum(1 for _ in top.walk()) == 50_001


def test_groups_share_rows_and_keep_first_seen_order():
    top = place_all(["layer1.0.weight", "layer1.0.bias", "layer2.weight", "fc"])
    assert shape(top) == [
        ("layer1", "layer1", 0, [("0", "layer1.0", 0, [("weight", "layer1.0.weight", 1, []),
                                                       ("bias", "layer1.0.bias", 2, [])])]),
        ("layer2", "layer2", 0, [("weight", "layer2.weight", 3, [])]),
        ("fc", "fc", 4, []),
    ]


def test_a_key_and_a_group_of_the_same_name_are_one_row_in_either_order():
    for keys in (["x", "x.y"], ["x.y", "x"]):
        top = place_all(keys)
        assert len(top.children) == 1, keys
        x = top.children[0]
        assert (x.label, x.key, x.value) == ("x", "x", keys.index("x") + 1)
        assert [(c.label, c.key) for c in x.children] == [("y", "x.y")]
        assert top.total == 3


def test_a_duplicate_key_gets_its_own_row():
    top = Row("", "")
    rows = DottedKeys(Row)
    for value in (1, 2):
        rows.place(top, ["a", "b"], taken=lambda r: r.value != 0).value = value
    a = top.children[0]
    assert [(c.label, c.key, c.value) for c in a.children] == [("b", "a.b", 1),
                                                               ("b", "a.b", 2)]


def test_int_and_str_parts_never_meet():
    top = Row("", "")
    rows = DottedKeys(Row)
    rows.place(top, [0])
    rows.place(top, ["0"])
    assert [c.key for c in top.children] == ["0", "0"]


def test_roll_up_with_a_function():
    top = place_all(["a.b", "a.c", "d"])
    seen = []
    roll_up(top, lambda n: seen.append(n.key))
    assert seen == ["d", "a.c", "a.b", "a", ""]  # children before their parent


def test_natural_key():
    labels = ["layer10", "Layer2", "layer1", "fc"]
    assert sorted(labels, key=natural_key) == ["fc", "layer1", "Layer2", "layer10"]
