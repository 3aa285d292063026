"""The tree people browse (core/display.py)."""

from __future__ import annotations

from _trees import state_dict, tensor

from ckpt_inspector.core.display import build_display_tree
from ckpt_inspector.core.tree import Node


def rows(top) -> list[tuple[str, str, str]]:
    return [(d.label, d.key, d.kind) for d in top.walk() if d is not top]


def test_dotted_keys_are_grouped_into_modules_with_totals():
    root = state_dict(tensor("conv.weight", (4, 3)), tensor("conv.bias", (4,)),
                      tensor("fc.weight", (2, 4), "float16"))
    top = build_display_tree(root)
    assert rows(top) == [("conv", "conv", "group"), ("weight", "conv.weight", "tensor"),
                         ("bias", "conv.bias", "tensor"), ("fc", "fc", "group"),
                         ("weight", "fc.weight", "tensor")]
    conv, fc = top.children
    assert (conv.tensors, conv.numel, conv.nbytes) == (2, 16, 64)
    assert (fc.tensors, fc.numel, fc.nbytes) == (1, 8, 16)
    assert (top.tensors, top.numel, top.nbytes) == (3, 24, 80)
    assert top.node is root


def test_flat_view_keeps_the_files_keys():
    root = state_dict(tensor("conv.weight"), tensor("conv.bias"))
    top = build_display_tree(root, grouped=False)
    assert rows(top) == [("conv.weight", "conv.weight", "tensor"),
                         ("conv.bias", "conv.bias", "tensor")]
    assert [d.order for d in top.children] == [0, 1]


def test_a_key_and_the_keys_below_it_are_one_row():
    """Issue 13: keys ``x`` and ``x.y`` once gave two sibling rows both keyed ``x``."""
    for order in (("x", "x.y"), ("x.y", "x")):
        root = state_dict(*(tensor(k) for k in order))
        top = build_display_tree(root)
        assert [c.key for c in top.children] == ["x"], order
        x = top.children[0]
        assert x.kind == "tensor" and x.node.key == "x"
        assert [(c.label, c.key) for c in x.children] == [("y", "x.y")]
        assert (x.tensors, x.numel) == (2, 12) and top.tensors == 2


def test_nested_containers_and_a_bare_value():
    inner = state_dict(tensor("a.b"))
    inner.key = "model"
    root = state_dict(inner, Node("scalar", "epoch", "int", value=3))
    top = build_display_tree(root)
    assert rows(top) == [("model", "model", "dict"), ("a", "model.a", "group"),
                         ("b", "model.a.b", "tensor"), ("epoch", "epoch", "scalar")]
    lone = Node("tensor", None, tensor=tensor("t").tensor)
    top = build_display_tree(lone)
    assert rows(top) == [("(root)", "", "tensor")] and top.tensors == 1


def test_lists_are_not_grouped():
    root = Node("list", None, "list")
    for i in range(3):
        root.add(tensor(i))
    top = build_display_tree(root)
    assert rows(top) == [("0", "0", "tensor"), ("1", "1", "tensor"), ("2", "2", "tensor")]


def test_an_archives_member_names_are_not_grouped_as_modules(tmp_path):
    """A zip's ``model.pt`` and ``m0.pkl`` are files: once shown as module ``model``
    holding ``pt``; the state_dict inside a member is still grouped."""
    import pickle
    import zipfile

    import torch

    from ckpt_inspector.core.formats import open_checkpoint

    inner = tmp_path / "inner.pt"
    torch.save({"conv.weight": torch.zeros(2), "conv.bias": torch.zeros(1)}, inner)
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.write(inner, "model.pt")
        z.writestr("m0.pkl", pickle.dumps([1, 2]))
        z.writestr("config.json", "{}")
    top = build_display_tree(open_checkpoint(str(path)).root)
    labels = [d.label for d in top.children]
    assert labels == ["model.pt", "m0.pkl", "config.json"]
    model = top.children[0]
    assert [(d.label, d.key) for d in model.walk() if d is not model][:2] == [
        ("conv", "model.pt.conv"), ("weight", "model.pt.conv.weight")]
