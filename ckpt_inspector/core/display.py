"""The tree people browse: the node tree with dotted state_dict keys grouped into modules.

``layer1.0.conv1.weight`` in a state_dict becomes ``layer1 > 0 > conv1 > weight``;
group rows carry the number of tensors, elements and bytes below them. The
flat view keeps the file's own keys. Qt-free, so the GUI's item model is a thin
adapter and the whole tree can be built on a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.tree import Node


@dataclass(eq=False, slots=True)
class DisplayNode:
    label: str
    node: Node | None  # None for a synthetic group of dotted keys
    key: str  # the full dotted key from the root, as info --json names it
    parent: DisplayNode | None = field(default=None, repr=False)
    children: list[DisplayNode] = field(default_factory=list, repr=False)
    row: int = 0
    order: int = 0  # position in the file, to undo sorting
    tensors: int = 0
    numel: int = 0
    nbytes: int = 0

    @property
    def kind(self) -> str:
        return self.node.kind if self.node is not None else "group"

    @property
    def is_tensor(self) -> bool:
        return self.node is not None and self.node.tensor is not None

    def add(self, child: DisplayNode) -> DisplayNode:
        child.parent = self
        child.row = child.order = len(self.children)
        self.children.append(child)
        return child

    def walk(self):
        stack = [self]
        while stack:
            n = stack.pop()
            yield n
            stack.extend(reversed(n.children))


def _join(prefix: str, label: Any) -> str:
    return f"{prefix}.{label}" if prefix else str(label)


def _groupable(node: Node) -> bool:
    """A mapping whose keys are dotted names: a state_dict, safetensors, ONNX initializers."""
    return node.kind == "dict" and any(isinstance(c.key, str) and "." in c.key
                                       for c in node.children)


def build_display_tree(root: Node, grouped: bool = True) -> DisplayNode:
    """The browsable tree for ``root``; iterative, so any depth the reader allows works."""
    top = DisplayNode("", None, "")
    top.node = root
    if not root.children:  # one bare tensor or value: show it as the only row
        top.add(DisplayNode("(root)", root, ""))
        _totals(top)
        return top
    stack: list[tuple[Node, DisplayNode]] = [(root, top)]
    while stack:
        node, dnode = stack.pop()
        if grouped and _groupable(node):
            groups: dict[tuple[int, str], DisplayNode] = {}
            for child in node.children:
                parts = child.key.split(".") if isinstance(child.key, str) else [child.key]
                parent = dnode
                for part in parts[:-1]:
                    gkey = (id(parent), part)
                    group = groups.get(gkey)
                    if group is None:
                        group = parent.add(DisplayNode(part, None, _join(parent.key, part)))
                        groups[gkey] = group
                    parent = group
                leaf = parent.add(DisplayNode(str(parts[-1]), child,
                                              _join(dnode.key, child.key)))
                stack.append((child, leaf))
        else:
            for child in node.children:
                leaf = dnode.add(DisplayNode(str(child.key), child, _join(dnode.key, child.key)))
                stack.append((child, leaf))
    _totals(top)
    return top


def _totals(top: DisplayNode) -> None:
    for d in reversed(list(top.walk())):
        if d.is_tensor:
            t = d.node.tensor
            d.tensors, d.numel, d.nbytes = 1, t.numel, t.nbytes
        else:
            d.tensors = sum(c.tensors for c in d.children)
            d.numel = sum(c.numel for c in d.children)
            d.nbytes = sum(c.nbytes for c in d.children)
