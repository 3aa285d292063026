"""What an export writes: the part of the file, its tensors and their new keys.

:func:`sources` lists the parts of a checkpoint that hold tensors (best guess first),
:class:`KeyRules` change the keys (include, exclude, strip, rename, add a prefix) and
:func:`make_plan` checks the whole choice before anything is written. Plain Python,
no torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import ExportUsageError, SourceDataError
from ckpt_inspector.core.summary import counted
from ckpt_inspector.core.tree import Checkpoint, Node, TensorInfo, key_of

CASTS = ("float32", "float16", "bfloat16")
_NUMPY_FLOATS = {"float64", "float32", "float16", "bfloat16"}
SAFETENSORS_CODE = {v: k for k, v in dtypes.SAFETENSORS_CODES.items()}

# the location tags torch.save records (torch.serialization.location_tag), with an index
_DEVICE = re.compile(r"(cpu|meta|mps|cuda|xpu|hpu|mtia|privateuseone)(:\d+)?")


def check_device(device: str) -> str:
    """A device name torch records and loads (``cpu``, ``cuda:0``, ``mps``...), or
    :class:`ExportUsageError`. Whether this machine has it is not asked: a file recorded
    on ``cuda:0`` can be written anywhere."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ExportUsageError(f"{device!r} is not a device (cpu, cuda, cuda:0, mps, xpu:1, …)")
    return device


# -- what to export ------------------------------------------------------------------------
@dataclass
class Source:
    """A subtree that holds tensors: the whole file, ``model_state_dict``, a module..."""

    key: str
    label: str
    tensors: int
    nbytes: int
    score: float  # how much it looks like a model's weights (for the default choice)


_MODEL_NAMES = ("model_state_dict", "state_dict", "model", "module", "net", "network",
                "weights", "params", "ema", "model_ema")


def sources(ckpt: Checkpoint) -> list[Source]:
    """The whole file and each container near the root that holds tensors, best first."""
    out: list[Source] = []
    whole = "(whole model)" if os.path.isdir(ckpt.path) else "(whole file)"
    stack: list[tuple[Node, int]] = [(ckpt.root, 0)]
    while stack:
        node, depth = stack.pop()
        items = state_dict_items(node)
        if items:
            key = key_of(node.path())
            name = str(node.key or "").lower()
            score = (2.0 if name in _MODEL_NAMES else 0.0) + (1.0 if node.kind == "module" else 0)
            score += 0.5 * (1 - sum("optim" in k or ".state." in k for k, _ in items)
                            / len(items))
            if not key:
                score += 0.25
            total = sum(t.nbytes for _, t in items)
            label = f"{key or whole} — {len(items):,} tensors"
            out.append(Source(key, label, len(items), total, score))
        if depth < 2:
            for child in node.children:
                if child.is_container and child.kind != "tensor":
                    stack.append((child, depth + 1))
    out.sort(key=lambda s: (-s.score, -s.nbytes))
    return out


def find_node(ckpt: Checkpoint, key: str) -> Node:
    if not key:
        return ckpt.root
    for node in ckpt.root.walk():
        if node.is_container and key_of(node.path()) == key:
            return node
    raise ExportUsageError(f"no part of the file is called {key!r}")


def state_dict_items(node: Node) -> list[tuple[str, TensorInfo]]:
    """``(key relative to node, tensor)`` for every tensor a state_dict would hold."""
    if node.kind == "tensor" and node.tensor is not None:
        return [("", node.tensor)]
    base = len(node.path())
    out = []
    for n in node.walk():
        if n.kind == "tensor" and n.tensor is not None and n.in_state_dict():
            out.append((key_of(n.path()[base:]), n.tensor))
    return out


# -- key transforms ------------------------------------------------------------------------
@dataclass
class KeyRules:
    """Key changes, applied in this order: include, exclude, strip, rename, add prefix."""

    strip_prefixes: list[str] = field(default_factory=list)
    add_prefix: str = ""
    renames: list[tuple[str, str]] = field(default_factory=list)  # (regex, replacement)
    include: list[str] = field(default_factory=list)  # regexes; empty keeps everything
    exclude: list[str] = field(default_factory=list)

    def _compiled(self, patterns: list[str]) -> list[re.Pattern[str]]:
        try:
            return [re.compile(p) for p in patterns]
        except re.error as err:
            raise ExportUsageError(f"invalid regular expression: {err}") from None

    def apply(self, keys: list[str]) -> list[tuple[str, str | None]]:
        """``(old, new)`` for each key; ``new`` is None for a key left out."""
        include = self._compiled(self.include)
        exclude = self._compiled(self.exclude)
        renames = [(re.compile(p), r) for p, r in self._check_renames()]
        out: list[tuple[str, str | None]] = []
        for key in keys:
            if include and not any(p.search(key) for p in include):
                out.append((key, None))
                continue
            if any(p.search(key) for p in exclude):
                out.append((key, None))
                continue
            new = key
            for prefix in self.strip_prefixes:
                if prefix and new.startswith(prefix):
                    new = new[len(prefix):]
            for pattern, repl in renames:
                new = pattern.sub(repl, new)
            out.append((key, self.add_prefix + new))
        seen: dict[str, str] = {}
        for old, new in out:
            if new is None:
                continue
            if new in seen:
                raise ExportUsageError(f"two keys would both become {new!r}: {seen[new]!r} "
                                       f"and {old!r}")
            seen[new] = old
        return out

    def _check_renames(self) -> list[tuple[str, str]]:
        for pattern, repl in self.renames:
            try:
                re.compile(pattern).sub(repl, "")
            except (re.error, IndexError) as err:
                raise ExportUsageError(f"invalid rename {pattern!r} → {repl!r}: {err}"
                                       ) from None
        return self.renames


def common_prefix(keys: list[str]) -> str:
    """``module.`` for a DataParallel state_dict: the dotted prefix every key shares."""
    if not keys:
        return ""
    first = keys[0].split(".")
    n = len(first) - 1
    for key in keys[1:]:
        parts = key.split(".")
        n = min(n, len(parts) - 1)
        for i in range(n):
            if parts[i] != first[i]:
                n = i
                break
    return ".".join(first[:n]) + "." if n else ""


# -- the plan ------------------------------------------------------------------------------
@dataclass
class Plan:
    source_path: str
    items: list[tuple[str, TensorInfo]]  # (output key, tensor)
    fmt: str  # pt | safetensors
    cast: str | None = None
    device: str = "cpu"
    metadata: dict[str, str] = field(default_factory=dict)
    renamed: int = 0
    excluded: int = 0

    def out_dtype(self, t: TensorInfo) -> str:
        """The cast applies to float64/32/16 and bfloat16 tensors; float8 and the rest
        keep their dtype (counted in :meth:`preview`). Types no format stores by element
        (sub-byte floats, ggml's quantized blocks) go out as their values: float32, or the
        cast."""
        d = dtypes.get(t.dtype)
        if d is not None and d.block is not None:
            return self.cast or "float32"
        if self.cast and t.dtype in _NUMPY_FLOATS and not t.quantization:
            return self.cast
        return t.dtype

    @property
    def nbytes(self) -> int:
        return sum(t.numel * (dtypes.itemsize(self.out_dtype(t)) or 1) for _, t in self.items)

    def preview(self) -> dict[str, Any]:
        kept = sum(1 for _, t in self.items if self.cast and self.out_dtype(t) != self.cast
                   and dtypes.KNOWN[t.dtype].kind == "float")
        out = {"tensors": len(self.items), "bytes": self.nbytes, "excluded": self.excluded,
               "renamed": self.renamed, "not_cast": kept,
               "keys": [k for k, _ in self.items[:200]]}
        decoded = self.dequantized()
        if decoded:
            out["dequantized"] = decoded
        return out

    def dequantized(self) -> dict[str, Any] | None:
        """The tensors stored in blocks (ggml's quantized types, sub-byte floats) that go
        out as their values: ``{"tensors", "to", "dtypes": {dtype: count}}``, or None."""
        found: dict[str, int] = {}
        to: set[str] = set()
        for _k, t in self.items:
            d = dtypes.get(t.dtype)
            if d is not None and d.block is not None and self.out_dtype(t) != t.dtype:
                found[t.dtype] = found.get(t.dtype, 0) + 1
                to.add(self.out_dtype(t))
        if not found:
            return None
        return {"tensors": sum(found.values()), "to": ", ".join(sorted(to)), "dtypes": found}


def make_plan(ckpt: Checkpoint, key: str = "", rules: KeyRules | None = None,
              cast: str | None = None, device: str = "cpu", fmt: str = "pt",
              metadata: dict[str, str] | None = None) -> Plan:
    """Which tensors go out under which keys, checked before anything is written."""
    if fmt not in ("pt", "safetensors"):
        raise ExportUsageError(f"unknown state_dict format {fmt!r}")
    if cast is not None and cast not in CASTS:
        raise ExportUsageError(f"dtype casts go to {', '.join(CASTS)}, not {cast!r}")
    check_device(device)
    items = state_dict_items(find_node(ckpt, key))
    if not items:
        raise ExportUsageError("there are no tensors to export there")
    if len(items) == 1 and items[0][0] == "":  # a file that is one bare tensor
        items = [("tensor", items[0][1])]
    mapping = (rules or KeyRules()).apply([k for k, _ in items])
    kept: list[tuple[str, TensorInfo]] = []
    renamed = excluded = 0
    for (old, new), (_k, t) in zip(mapping, items):
        if new is None:
            excluded += 1
            continue
        renamed += new != old
        kept.append((new, t))
    if not kept:
        raise ExportUsageError("the key rules leave no tensor to export")
    if fmt == "pt" and cast is None:  # float4 by element goes out as torch holds it
        from ckpt_inspector.core.decoded import torch_f4_view

        kept = [(k, torch_f4_view(t) or t) for k, t in kept]
    plan = Plan(ckpt.path, kept, fmt, cast, device, dict(metadata or {}), renamed, excluded)
    damaged = [k for k, t in kept if t.problem or t.storage is None or t.storage.source is None]
    if damaged:
        raise SourceDataError(f"{counted(len(damaged), 'tensor')} cannot be read, e.g. "
                              f"{damaged[0]!r}: {dict(kept)[damaged[0]].problem or 'no data'}")
    for k, t in kept:
        if t.layout != "strided":
            raise ExportUsageError(f"{k!r} is a {t.layout} tensor: only dense tensors are "
                                   "exported")
        if fmt == "safetensors" and plan.out_dtype(t) not in SAFETENSORS_CODE:
            raise ExportUsageError(f"{k!r} is {plan.out_dtype(t)}, which safetensors cannot "
                                   "store")
        if t.quantization and (fmt == "safetensors" or not t.quantization["scheme"].startswith(
                "per_tensor")):
            raise ExportUsageError(f"{k!r} is quantized ({t.quantization['scheme']}): export "
                                   "it to .pt, per-tensor quantization only")
    return plan


