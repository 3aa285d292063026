"""What an adapter is, as plain data: :class:`Adapter` (kind, base model, configuration)
and one :class:`AdaptedModule` per LoRA pair (rank, alpha, scale, the update's shape), their
JSON, and :func:`module_groups`, which folds modules that differ only in their layer
numbers into one row (``model.layers.0–31.self_attn.q_proj``) for the text and the window."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.tree import TensorInfo


@dataclass(eq=False)
class AdaptedModule:
    """One LoRA pair: the module it adapts (``name``, as the file names it), its two tensors
    (``a``: lora_A / lora_down, ``[r, in, *kernel]``; ``b``: lora_B / lora_up,
    ``[out, r, 1, ...]``), the rank read from their shapes, alpha and where it came from,
    and the scale the update is multiplied by (alpha/r, or alpha/√r with rsLoRA)."""

    name: str
    naming: str  # peft | kohya | diffusers
    a_key: str
    b_key: str
    a: TensorInfo
    b: TensorInfo
    kind: str  # linear | conv | embedding
    rank: int
    alpha: float
    alpha_from: str  # "lora_alpha", "alpha_pattern 'v_proj'", "tensor", "ss_network_alpha", ...
    scale: float
    update_shape: tuple[int, ...] | None  # None when the shapes do not pair
    # the update's rows and columns are B@A's (False), or its transpose's: an embedding's
    # (PEFT's lora_embedding_A is [r, num_embeddings]) or a fan_in_fan_out layer's
    transposed: bool = False
    extras: dict[str, str] = field(default_factory=dict)  # alpha / lora_mid / dora_scale keys
    problem: str | None = None  # why no update is computed (shapes, a Tucker lora_mid, ...)
    notes: list[str] = field(default_factory=list)

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.a_key, self.b_key, *self.extras.values())

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "module": self.name, "kind": self.kind, "a": self.a_key, "b": self.b_key,
            "rank": self.rank, "alpha": number(self.alpha), "alpha_from": self.alpha_from,
            "scale": number(self.scale),
            "a_shape": list(self.a.shape), "b_shape": list(self.b.shape),
            "update_shape": list(self.update_shape) if self.update_shape else None,
        }
        if self.extras:
            out["extras"] = dict(self.extras)
        if self.problem:
            out["problem"] = self.problem
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def number(x: float) -> float | int | str:
    """A rank, alpha or scale for JSON: whole numbers as ints, others as floats, NaN and
    infinities as their names."""
    if not math.isfinite(x):
        return repr(x)
    return int(x) if x == int(x) and abs(x) < 1 << 53 else x


@dataclass(eq=False)
class Adapter:
    """The LoRA pairs of one checkpoint and what describes them.

    ``kind`` is ``peft`` (an ``adapter_config.json`` gave rank and alpha) or ``lora``
    (a LoRA file: alpha from tensors, the file's metadata, or rank)."""

    kind: str
    naming: str  # how the keys are named: peft | kohya | diffusers (the most common)
    modules: list[AdaptedModule]
    base_model: str | None = None
    config_file: str | None = None  # the adapter_config.json read, where one was
    config: dict[str, Any] = field(default_factory=dict)  # the values that matter, as read
    other_tensors: list[str] = field(default_factory=list)  # saved whole (modules_to_save)
    unpaired: list[str] = field(default_factory=list)  # LoRA halves without their partner
    notes: list[str] = field(default_factory=list)
    _by_tensor: dict[int, AdaptedModule] = field(default_factory=dict, repr=False)
    _updates: dict[int, TensorInfo] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for m in self.modules:
            self._by_tensor[id(m.a)] = self._by_tensor[id(m.b)] = m

    # -- finding a module -------------------------------------------------------------------
    def module_of(self, info: TensorInfo | None) -> AdaptedModule | None:
        """The pair a tensor of the checkpoint belongs to (A or B), or None."""
        return self._by_tensor.get(id(info)) if info is not None else None

    def module_named(self, text: str) -> AdaptedModule | None:
        """The module a name means: the module's own name or any key of its pair."""
        for m in self.modules:
            if text == m.name or text in m.keys:
                return m
        return None

    # -- the effective update --------------------------------------------------------------
    def update_tensor(self, module: AdaptedModule) -> TensorInfo:
        """The effective update ``scale · B @ A`` of ``module`` as a tensor whose elements
        are computed when read (one object per module, so results computed for it are
        kept). Raises ValueError when the module has no update (``problem``)."""
        info = self._updates.get(id(module))
        if info is None:
            from ckpt_inspector.core.adapters.update import update_tensor

            info = self._updates[id(module)] = update_tensor(module)
        return info

    # -- summaries --------------------------------------------------------------------------
    def ranks(self) -> Counter[int]:
        return Counter(m.rank for m in self.modules)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "naming": self.naming,
            "base_model": self.base_model,
            "config_file": self.config_file,
            "config": self.config,
            "modules_count": len(self.modules),
            "rank": spread([m.rank for m in self.modules]),
            "alpha": spread([m.alpha for m in self.modules]),
            "scale": spread([m.scale for m in self.modules]),
            "modules": [m.to_json() for m in self.modules],
            "other_tensors": self.other_tensors,
            "unpaired": self.unpaired,
            "notes": self.notes,
        }


def spread(values: list[float]) -> dict[str, Any]:
    """``{"min", "max", "counts": {value: modules}}`` of ranks, alphas or scales (the counts
    keyed by the value's text, the most common first)."""
    if not values:
        return {"min": None, "max": None, "counts": {}}
    counts = Counter(values)
    return {"min": number(min(values)), "max": number(max(values)),
            "counts": {short(v): n for v, n in counts.most_common()}}


def short(x: float) -> str:
    """A rank, alpha or scale as people read it: ``16``, ``0.5``, ``2.82843``."""
    if not math.isfinite(x):
        return repr(x)
    return str(int(x)) if x == int(x) and abs(x) < 1e15 else f"{x:.6g}"


# -- modules that differ only in their numbers, in one row ---------------------------------
_DIGITS = re.compile(r"(\d+)")


@dataclass
class ModuleGroup:
    """Modules whose names differ only in numbers and that share rank, alpha and scale:
    ``pattern`` writes each number that differs as its range (``0–31``), its runs
    (``{0,2–31}``) or ``*``."""

    pattern: str
    modules: list[AdaptedModule]

    @property
    def first(self) -> AdaptedModule:
        return self.modules[0]


def _numbers_text(values: list[int], most: int = 3) -> str:
    """``7``, ``0–31``, ``{0,2–31}``; ``*`` for more than ``most`` runs."""
    distinct = sorted(set(values))
    runs: list[list[int]] = []
    for v in distinct:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    if len(runs) > most:
        return "*"
    text = ",".join(str(a) if a == b else f"{a}–{b}" for a, b in runs)
    return f"{{{text}}}" if len(runs) > 1 else text


def module_groups(modules: list[AdaptedModule], strip: str = "") -> list[ModuleGroup]:
    """The modules folded into groups (in the order each group first appears); ``strip``
    is a prefix left out of the patterns (``base_model.model.``)."""
    groups: dict[tuple[Any, ...], list[AdaptedModule]] = {}
    parts_of: dict[int, list[str]] = {}
    for m in modules:
        name = m.name[len(strip):] if strip and m.name.startswith(strip) else m.name
        parts = _DIGITS.split(name)
        parts_of[id(m)] = parts
        skeleton = tuple(parts[0::2])
        key = (skeleton, m.rank, m.alpha, m.scale, m.kind, m.problem is None)
        groups.setdefault(key, []).append(m)
    out = []
    for members in groups.values():
        parts = parts_of[id(members[0])]
        text = []
        for i, part in enumerate(parts):
            if i % 2 == 0:
                text.append(part)
            else:
                text.append(_numbers_text([int(parts_of[id(m)][i]) for m in members]))
        out.append(ModuleGroup("".join(text), members))
    return out
