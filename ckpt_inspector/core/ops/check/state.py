"""The two sides of a check: the state_dict a checkpoint holds (read by our readers, nothing
run) and a *target*, what a model expects and how it loads a state_dict. Plain Python."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.ops.check.report import Spec
from ckpt_inspector.core.ops.export import plan as ex
from ckpt_inspector.core.tree import Checkpoint, Node, key_of


class CheckUsageError(CheckpointError):
    """The check cannot be made as asked (an unknown architecture, a builder that fails to
    import or to build, a part that is not in the file): exit 2 with one line."""

    exit_code = 2


_PLAIN = (bool, int, float, str, bytes, type(None))


@dataclass(frozen=True)
class Item:
    """One entry of the state_dict: a tensor's shape and dtype, or a value that is no
    tensor (``spec.shape`` None) with the value itself where it is a plain one."""

    key: str
    spec: Spec
    value: Any = None


@dataclass
class StateDict:
    """The part of a checkpoint taken as the state_dict, as ``torch.load`` would give it:
    its entries in order, and its ``_metadata`` versions (None: it has none)."""

    key: str
    items: list[Item]
    versions: dict[str, int] | None = None

    def specs(self) -> dict[str, Spec]:
        return {i.key: i.spec for i in self.items}


def default_part(ckpt: Checkpoint) -> str:
    """The part that looks most like a model's weights (as ``arch`` and ``export`` guess)."""
    found = ex.sources(ckpt)
    return found[0].key if found else ""


def read_part(ckpt: Checkpoint, key: str | None = None, label: str = "the checkpoint"
              ) -> StateDict:
    """The state_dict at ``key`` (None: the best guess): every tensor a state_dict would hold
    under its dotted key, and, in a plain dict, its other values (torch sees those keys
    too). :class:`CheckUsageError` (naming the file as ``label``) for a key it does not
    have, or a part that holds no state_dict."""
    part = default_part(ckpt) if key is None else key
    try:
        node = ex.find_node(ckpt, part)
    except CheckpointError:
        raise CheckUsageError(f"{label} has no part called {part!r} (--key)") from None
    where = f"{label}'s {part!r}" if part else label
    tensors = ex.state_dict_items(node)
    if not tensors:
        raise CheckUsageError(f"{where} holds no tensors: no state_dict to check")
    if len(tensors) == 1 and tensors[0][0] == "":
        raise CheckUsageError(f"{where} is one tensor, not a state_dict")
    base = len(node.path())
    items = []
    for n in node.walk():  # depth first: the file's order
        if n.kind == "tensor" and n.tensor is not None and n.in_state_dict():
            items.append(Item(key_of(n.path()[base:]), Spec(tuple(n.tensor.shape),
                                                             n.tensor.dtype)))
        elif n.parent is node and node.kind == "dict" and not n.is_container:
            items.append(Item(str(n.key), Spec(None, _type_name(n)),
                              n.value if isinstance(n.value, _PLAIN) else None))
    return StateDict(part, items, node.versions)


def _type_name(node: Node) -> str:
    name = node.type_name or node.kind
    return name.rsplit(".", 1)[-1] if name.startswith("builtins.") else name


@dataclass
class Outcome:
    """What ``load_state_dict`` reports: missing and unexpected keys, the keys of its size
    mismatches, and its other error messages (with their key where one is named), in the
    order torch finds them."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    errors: list[tuple[str | None, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.errors)


class Target:
    """A model to load into: the keys it expects (its ``state_dict()``'s, in order) and
    :meth:`load`, what its ``load_state_dict(strict=True)`` reports for given entries."""

    kind = ""  # arch | builder | checkpoint
    name = ""
    exact = True  # torch's own code decides (False: emulated from another checkpoint)
    expected: dict[str, Spec]

    def load(self, items: list[Item], versions: dict[str, int] | None) -> Outcome:
        raise NotImplementedError

    def with_classes(self, num_classes: int) -> Target | None:
        """The same model built for ``num_classes`` classes, where that can be done."""
        return None

    def build_code(self, num_classes: int | None = None) -> str:
        """Python that builds the model (for the fix's code)."""
        return "model = ...  # your model"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "tensors": len(self.expected)}
