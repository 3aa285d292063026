"""The tree people browse: the node tree with dotted state_dict keys grouped into modules.

``layer1.0.conv1.weight`` in a state_dict becomes ``layer1 > 0 > conv1 > weight`` (the
rule of :class:`~ckpt_inspector.core.keytree.DottedKeys`: keys ``x`` and ``x.y`` are one
row ``x`` holding ``y``); group rows carry the number of tensors, elements and bytes below
them. The flat view keeps the file's own keys. Qt-free, so the GUI's item model is a thin
adapter and the whole tree can be built on a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from ckpt_inspector.core.keytree import DottedKeys, KeyRow, join, roll_up, split_key
from ckpt_inspector.core.tree import Node


@dataclass(eq=False, slots=True)
class DisplayNode(KeyRow):
    """A row: a node of the checkpoint (``node``), a group of dotted keys (``node`` None),
    or both (a key that other keys extend). Totals cover the row and all below it."""

    node: Node | None = None
    tensors: int = 0
    numel: int = 0
    nbytes: int = 0

    @property
    def kind(self) -> str:
        return self.node.kind if self.node is not None else "group"

    @property
    def is_tensor(self) -> bool:
        return self.node is not None and self.node.tensor is not None

    def tally(self) -> None:
        tensors = numel = nbytes = 0
        t = self.node.tensor if self.node is not None else None
        if t is not None:
            tensors, numel, nbytes = 1, t.numel, t.nbytes
        for c in self.children:
            tensors += c.tensors
            numel += c.numel
            nbytes += c.nbytes
        self.tensors, self.numel, self.nbytes = tensors, numel, nbytes


def _groupable(node: Node) -> bool:
    """A mapping whose keys are dotted names: a state_dict, safetensors, ONNX initializers."""
    return node.kind == "dict" and any(isinstance(c.key, str) and "." in c.key
                                       for c in node.children)


def _taken(row: DisplayNode) -> bool:
    return row.node is not None


def build_display_tree(root: Node, grouped: bool = True) -> DisplayNode:
    """The browsable tree for ``root``; iterative, so any depth the reader allows works."""
    top = DisplayNode("", "", node=root)
    if not root.children:  # one bare tensor or value: show it as the only row
        top.add(DisplayNode("(root)", "", node=root))
        top.node = None  # counted once, in its row
        roll_up(top)
        top.node = root
        return top
    rows = DottedKeys(DisplayNode)
    stack: list[tuple[Node, DisplayNode]] = [(root, top)]
    while stack:
        node, dnode = stack.pop()
        if grouped and _groupable(node):
            for child in node.children:
                row = rows.place(dnode, split_key(child.key), taken=_taken)
                row.node = child
                stack.append((child, row))
        else:
            for child in node.children:
                row = dnode.add(DisplayNode(str(child.key), join(dnode.key, child.key),
                                            node=child))
                stack.append((child, row))
    roll_up(top)
    return top
