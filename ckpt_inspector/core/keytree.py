"""What every tree of the program shares: the node base, the rule that groups dotted keys
into modules, and the roll-up of totals.

- :class:`TreeNode`: ``parent``/``row``/``children``, :meth:`~TreeNode.add` and
  :meth:`~TreeNode.walk`; the checkpoint's :class:`~ckpt_inspector.core.tree.Node`, the
  rows people browse (:class:`~ckpt_inspector.core.display.DisplayNode`) and the rows of a
  comparison (:class:`~ckpt_inspector.core.ops.difftree.DiffNode`) derive from it, so a Qt
  model maps an index to a node and back the same way for all of them.
- :class:`KeyRow`: a row with a ``label`` and the full dotted ``key`` from the root.
- :class:`DottedKeys`: ``layer1.0.conv1.weight`` under ``layer1 > 0 > conv1``. One key,
  one row: a key that is also the prefix of other keys (``x`` and ``x.y``) is one row that
  holds both its own value and the group below it, whichever comes first.
- :func:`roll_up`: every row's totals from its own and its children's, children first,
  without recursion.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar


@dataclass(eq=False, slots=True, kw_only=True)
class TreeNode:
    """A node that knows its parent and its row in it (O(1) index <-> node)."""

    children: list[Any] = field(default_factory=list, repr=False)
    parent: Any = field(default=None, repr=False)
    row: int = 0

    def add(self, child: Any) -> Any:
        child.parent = self
        child.row = len(self.children)
        self.children.append(child)
        return child

    def walk(self) -> Iterator[Any]:
        """This node and all below it, depth first, without recursion."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def tally(self) -> None:
        """Compute this node's totals from its own data and its children's (see
        :func:`roll_up`); nothing to total by default."""


@dataclass(eq=False, slots=True)
class KeyRow(TreeNode):
    """A row of a browsable tree: what it shows (``label``) and its full dotted ``key``;
    ``order`` is its place among its siblings as built (the file's order), to undo sorting."""

    label: str
    key: str
    order: int = 0

    def add(self, child: Any) -> Any:
        TreeNode.add(self, child)
        child.order = child.row
        return child


R = TypeVar("R", bound=KeyRow)
_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[Any, ...]:
    """How labels sort for people: ``layer2`` before ``layer10``, case aside."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in _DIGITS.split(text))


def join(prefix: str, part: Any) -> str:
    """The dotted key of ``part`` below ``prefix``."""
    return f"{prefix}.{part}" if prefix else str(part)


def split_key(key: Any) -> list[Any]:
    """The parts of a key: a string at its dots; any other key is one part."""
    return key.split(".") if isinstance(key, str) else [key]


class DottedKeys(Generic[R]):
    """The one rule that groups dotted keys into modules.

    :meth:`place` returns the row of a key below a parent, making the group rows on the
    way with ``make(label, key)``. Rows are looked up by (parent, part), so a group and a
    key of the same name are the same row, in either order; ``int`` and ``str`` parts never
    meet. Whether a row already holds a value of its own is the caller's to say
    (see :meth:`place`'s ``taken``)."""

    __slots__ = ("_make", "_rows")

    def __init__(self, make: Callable[[str, str], R]):
        self._make = make
        self._rows: dict[tuple[int, Any], R] = {}

    def place(self, parent: R, parts: Sequence[Any], label: str | None = None,
              taken: Callable[[R], bool] | None = None) -> R:
        """The row for the key ``parts`` below ``parent``. ``label`` names the key's own row
        when it is made (default: its last part). A row for which ``taken`` is true
        already holds another value with the same key (a duplicate key): the new one gets
        a row of its own beside it, which no later key joins."""
        last = len(parts) - 1
        for depth, part in enumerate(parts):
            slot = (id(parent), part)
            row = self._rows.get(slot)
            if row is None:
                text = label if depth == last and label is not None else str(part)
                row = self._rows[slot] = parent.add(self._make(text, join(parent.key, part)))
            elif depth == last and taken is not None and taken(row):
                text = label if label is not None else str(part)
                return parent.add(self._make(text, row.key))
            parent = row
        return parent


def roll_up(top: TreeNode, tally: Callable[[Any], None] | None = None) -> None:
    """Every node's :meth:`~TreeNode.tally` (or ``tally(node)``), each after all of its
    children's, so a node's totals can be the sum of its children's."""
    for node in reversed(list(top.walk())):
        if tally is None:
            node.tally()
        else:
            tally(node)
