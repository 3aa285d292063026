"""Another checkpoint as the model: ``load_state_dict`` followed step by step without torch.

The modules are what the other checkpoint's keys say (``layer1.0.conv1.weight``: a module
``layer1.0.conv1`` holding ``weight``, below ``layer1.0`` and ``layer1``), visited as torch
visits them, depth first in the order they first appear; each module reports its own
missing keys (its parameters and buffers, in order), its size mismatches, and the keys
under its prefix whose next part is neither one of its tensors nor a child module
(unexpected). A module with ``running_mean``, ``running_var`` and ``num_batches_tracked``
is taken for a BatchNorm: as torch's does, it fills a missing ``num_batches_tracked`` in
unless the state_dict's ``_metadata`` says it was saved at version 2 or later.

What the keys cannot say: modules without tensors (an unexpected key under one is
reported at its parent, earlier in the list than torch would), and loaders of their own
(torchvision's FrozenBatchNorm2d drops ``num_batches_tracked``). A model built by
torch (``--arch``, ``--builder``) has none of these limits.
"""

from __future__ import annotations

from ckpt_inspector.core.ops.check.report import Spec
from ckpt_inspector.core.ops.check.state import Item, Outcome, Target

_BATCHNORM = ("running_mean", "running_var", "num_batches_tracked")
EXTRA_STATE = "_extra_state"  # torch.nn.modules.module._EXTRA_STATE_KEY_SUFFIX


class _Module:
    __slots__ = ("children", "local", "prefix")

    def __init__(self, prefix: str):
        self.prefix = prefix  # "" or "layer1.0."
        self.children: dict[str, _Module] = {}
        self.local: list[str] = []


def modules(keys: list[str]) -> _Module:
    """The module tree the keys describe."""
    root = _Module("")
    for key in keys:
        *path, name = key.split(".")
        module = root
        for part in path:
            child = module.children.get(part)
            if child is None:
                child = module.children[part] = _Module(f"{module.prefix}{part}.")
            module = child
        module.local.append(name)
    return root


def shapes_match(checkpoint: tuple[int, ...], model: tuple[int, ...]) -> bool:
    """torch's rule: equal shapes, or a 1-element vector into a 0-d tensor (old files)."""
    return checkpoint == model or (model == () and len(checkpoint) == 1)


def emulate(expected: dict[str, Spec], items: list[Item],
            versions: dict[str, int] | None) -> Outcome:
    """What ``load_state_dict(strict=True)`` of a model whose ``state_dict()`` is
    ``expected`` reports for ``items``."""
    given = {i.key: i for i in items}
    out = Outcome()
    stack = [modules(list(expected))]
    while stack:
        module = stack.pop()
        _load_module(module, expected, given, items, versions, out)
        stack.extend(reversed(module.children.values()))
    return out


def _load_module(module: _Module, expected: dict[str, Spec], given: dict[str, Item],
                 items: list[Item], versions: dict[str, int] | None, out: Outcome) -> None:
    p = module.prefix
    filled = None
    if all(n in module.local for n in _BATCHNORM) and p + "num_batches_tracked" not in given:
        version = (versions or {}).get(p[:-1])
        if version is None or version < 2:
            filled = p + "num_batches_tracked"
    extra = p + EXTRA_STATE
    if extra in given and EXTRA_STATE not in module.local:
        out.unexpected.append(extra)  # torch: no set_extra_state, so nothing takes it
    for name in module.local:
        key = p + name
        item = given.get(key)
        if item is None:
            if key != filled:
                out.missing.append(key)
            continue
        if name == EXTRA_STATE:
            continue  # whatever it is, set_extra_state takes it
        want, got = expected[key], item.spec
        if got.shape is None:
            out.errors.append((key, f'While copying the parameter named "{key}", expected '
                                    "torch.Tensor or Tensor-like object from checkpoint but "
                                    f"received <class '{got.dtype}'>"))
        elif want.shape is not None and not shapes_match(got.shape, want.shape):
            out.mismatched.append(key)
    local = set(module.local)
    for item in items:
        if item.key.startswith(p) and item.key != extra:
            head, dot, _rest = item.key[len(p):].partition(".")
            # torch: a dotted rest must go to a child module, a plain name to a tensor here
            if (head not in module.children) if dot else (head not in local):
                out.unexpected.append(item.key)


class CheckpointTarget(Target):
    """Another checkpoint's state_dict as the model (``check --against``)."""

    kind = "checkpoint"
    exact = False

    def __init__(self, name: str, expected: dict[str, Spec], part: str = ""):
        self.name = name
        self.part = part
        self.expected = expected

    def load(self, items: list[Item], versions: dict[str, int] | None) -> Outcome:
        return emulate(self.expected, items, versions)

    def build_code(self, num_classes: int | None = None) -> str:
        return "model = ...  # the model whose state_dict is " + self.name

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "key": self.part}
