"""The tree people browse: the node tree with dotted state_dict keys grouped into modules.

``layer1.0.conv1.weight`` in a state_dict becomes ``layer1 > 0 > conv1 > weight`` (the
rule of :class:`~ckpt_inspector.core.keytree.DottedKeys`: keys ``x`` and ``x.y`` are one
row ``x`` holding ``y``); group rows carry the number of tensors, elements and bytes below
them. The flat view keeps the file's own keys. Qt-free, so the GUI's item model is a thin
adapter and the whole tree can be built on a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.keytree import KeyRow, join, roll_up
from ckpt_inspector.core.tree import ARCHIVE_SUFFIX, Node


@dataclass(eq=False, slots=True)
class DisplayNode(KeyRow):
    """A row: a node of the checkpoint (``node``), a group of dotted keys (``node`` None),
    or both (a key that other keys extend). Totals cover the row and all below it."""

    node: Node | None = None
    tensors: int = 0
    numel: int = 0
    nbytes: int = 0
    largest: int = 0  # bytes of the largest single tensor at or below this row

    @property
    def kind(self) -> str:
        return self.node.kind if self.node is not None else "group"

    @property
    def is_tensor(self) -> bool:
        return self.node is not None and self.node.tensor is not None

    def tally(self) -> None:
        tensors = numel = nbytes = largest = 0
        t = self.node.tensor if self.node is not None else None
        if t is not None:
            tensors, numel, nbytes = 1, t.numel, t.nbytes
            largest = nbytes
        for c in self.children:
            tensors += c.tensors
            numel += c.numel
            nbytes += c.nbytes
            if c.largest > largest:
                largest = c.largest
        self.tensors, self.numel, self.nbytes, self.largest = tensors, numel, nbytes, largest


def _groupable(node: Node) -> bool:
    """A mapping whose keys are dotted names: a state_dict, safetensors, ONNX initializers;
    not the members of a zip or tar archive (``model.pt`` is a file name, not module
    ``model``'s ``pt``)."""
    return node.kind == "dict" and not node.type_name.endswith(ARCHIVE_SUFFIX) and any(
        isinstance(c.key, str) and "." in c.key for c in node.children)


# id of a row -> its rows by part: one small dict per row rather than one entry per row in
# a dict of the whole tree (past a million entries, each time such a dict grows it copies
# itself in one step that holds the interpreter's lock for a quarter of a second)
Slots = dict[int, dict[Any, DisplayNode]]


def _rows_of(slots: Slots, parent: DisplayNode) -> dict[Any, DisplayNode]:
    rows = slots.get(id(parent))
    if rows is None:
        rows = slots[id(parent)] = {}
    return rows


def _place_all(dnode: DisplayNode, children: list[Node], slots: Slots, made: list[DisplayNode],
               stack: list[tuple[Node, DisplayNode]]) -> None:
    """The rows of a groupable mapping's children below ``dnode``, by the rule of
    :class:`~ckpt_inspector.core.keytree.DottedKeys` (rows looked up by parent and part in
    ``slots``, shared by the whole tree; ``x`` and ``x.y`` share the row ``x``; a duplicate
    key gets a row of its own that nothing joins). Group rows are remembered by their
    dotted prefix, so a key costs a look-up or two, not one per part.

    A state_dict holds 100,000s of keys: the common case (a dotted string key whose
    parent group exists, or is one part below one that does) is made inline, rows are
    built without keyword arguments, and only a row with children goes on the stack."""
    groups: dict[str, DisplayNode] = {}  # dotted prefix -> its group row
    get_group, add_made, push = groups.get, made.append, stack.append
    last_parent: DisplayNode | None = None
    here: dict[Any, DisplayNode] = {}  # the rows of last_parent
    for child in children:
        key = child.key
        if type(key) is str and "." in key:
            prefix, _, part = key.rpartition(".")
            parent = get_group(prefix) if prefix else None
            if parent is None:
                head, dot, last = prefix.rpartition(".")
                above = get_group(head) if dot and head else None
                if above is not None:  # one group row missing: made here
                    rows = _rows_of(slots, above)
                    parent = rows.get(last)
                    if parent is None:
                        kids = above.children
                        n = len(kids)
                        parent = rows[last] = DisplayNode(
                            last, f"{above.key}.{last}" if above.key else last, n)
                        parent.parent = above
                        parent.row = n
                        kids.append(parent)
                        add_made(parent)
                    groups[prefix] = parent
                else:
                    parent = _group(dnode, prefix, groups, slots, made)
        else:
            parent, part = dnode, key
        if parent is not last_parent:
            last_parent, here = parent, _rows_of(slots, parent)
        row = here.get(part)
        if row is None:
            kids = parent.children
            n = len(kids)
            pkey = parent.key
            row = here[part] = DisplayNode(str(part), f"{pkey}.{part}" if pkey else str(part),
                                           n)
            row.parent = parent  # the two stores cost less than keyword arguments
            row.row = n
            kids.append(row)
            add_made(row)
        elif row.node is not None:  # a duplicate key: a row of its own beside it
            row = _make(parent, str(part), row.key, made)
        row.node = child
        if child.children:
            push((child, row))


def _group(dnode: DisplayNode, prefix: str, groups: dict[str, DisplayNode], slots: Slots,
           made: list[DisplayNode]) -> DisplayNode:
    """The group row of the dotted ``prefix`` below ``dnode``, made (with the rows above
    it) where missing; iterative, for keys of any number of parts."""
    missing: list[str] = []
    parent = None
    while parent is None:
        head, dot, part = prefix.rpartition(".")
        missing.append(part)
        if not dot:
            parent = dnode
        else:
            prefix = head
            parent = groups.get(prefix) if prefix else None
    if not dot:
        prefix = ""
    for part in reversed(missing):
        rows = _rows_of(slots, parent)
        row = rows.get(part)
        if row is None:
            row = rows[part] = _make(parent, part, join(parent.key, part), made)
        prefix = f"{prefix}.{part}" if prefix or parent is not dnode else part
        groups[prefix] = parent = row
    return parent


def _make(parent: DisplayNode, label: str, key: str, made: list[DisplayNode]) -> DisplayNode:
    children = parent.children
    n = len(children)
    row = DisplayNode(label, key, n, parent=parent, row=n)
    children.append(row)
    made.append(row)
    return row


def _tally_all(made: list[DisplayNode]) -> None:
    """Every row's totals, children first: a row is made after its parent, so in reverse
    order of making each row is complete when it is added to its parent's."""
    sizes: dict[str, int] = {}  # dtype -> bytes per element (a property call per tensor)
    for row in reversed(made):
        node = row.node
        t = node.tensor if node is not None else None
        tensors, numel, nbytes = row.tensors, row.numel, row.nbytes
        if t is not None:
            n = t.numel
            tensors += 1
            numel += n
            if t.layout == "strided":
                size = sizes.get(t.dtype)
                if size is None:
                    size = sizes[t.dtype] = t.itemsize
                own = n * size
            else:
                own = t.nbytes
            nbytes += own
            row.tensors, row.numel, row.nbytes = tensors, numel, nbytes
            if own > row.largest:
                row.largest = own
        parent = row.parent
        if parent is not None:
            parent.tensors += tensors
            parent.numel += numel
            parent.nbytes += nbytes
            if row.largest > parent.largest:
                parent.largest = row.largest


def build_display_tree(root: Node, grouped: bool = True) -> DisplayNode:
    """The browsable tree for ``root``; iterative, so any depth the reader allows works."""
    top = DisplayNode("", "", node=root)
    if not root.children:  # one bare tensor or value: show it as the only row
        top.add(DisplayNode("(root)", "", node=root))
        top.node = None  # counted once, in its row
        roll_up(top)
        top.node = root
        return top
    made: list[DisplayNode] = [top]
    slots: Slots = {}
    stack: list[tuple[Node, DisplayNode]] = [(root, top)]
    while stack:
        node, dnode = stack.pop()
        if grouped and _groupable(node):
            _place_all(dnode, node.children, slots, made, stack)
        else:
            for child in node.children:
                row = _make(dnode, str(child.key), join(dnode.key, child.key), made)
                row.node = child
                if child.children:
                    stack.append((child, row))
    _tally_all(made)
    # emptied a row at a time: left to go at once, the 100,000s of small dicts would be
    # freed in one step that holds the interpreter's lock (140 ms for a million keys)
    pop = slots.popitem
    for _ in range(len(slots)):
        pop()
    return top
