"""Compare two checkpoints: which keys, shapes, dtypes and values changed.

:func:`diff` is a generator that yields :class:`Progress` and returns a :class:`DiffResult`.
Keys are matched exactly, or after prefix rules (``module.`` of DataParallel, ``model.`` of
Lightning, ``model_state_dict.`` of a training checkpoint) given by the caller or found
automatically when they match more keys. Tensors of the same shape and dtype are first
compared byte for byte, in chunks read in lockstep from both files (exact, and as fast as
reading the two files once); only a pair that differs is read again as numbers, in float64,
for its max/mean absolute difference, relative L2 difference and cosine similarity (both in
:mod:`~ckpt_inspector.core.ops.tensor_diff`). Neither file is ever loaded whole, and no code
in either is run.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.ops.tensor_diff import (
    RAW_BLOCK,
    Buffers,
    Numbers,
    numbers,
    same_bytes,
    same_place,
)
from ckpt_inspector.core.ops.tensor_diff import describe_numbers as describe_numbers  # for cli
from ckpt_inspector.core.progress import Cancelled, CancelToken, Job, Progress
from ckpt_inspector.core.tree import Checkpoint, Node, TensorInfo, key_of

# statuses, in the order a report lists them
ONLY_A, ONLY_B, KIND, SHAPE, DTYPE, CHANGED, UNREADABLE, IDENTICAL = (
    "only in A", "only in B", "kind changed", "shape changed", "dtype changed",
    "values changed", "unreadable", "identical")
STATUSES = (ONLY_A, ONLY_B, KIND, SHAPE, DTYPE, CHANGED, UNREADABLE, IDENTICAL)
JSON_STATUS = {ONLY_A: "only_a", ONLY_B: "only_b", KIND: "kind", SHAPE: "shape",
               DTYPE: "dtype", CHANGED: "changed", UNREADABLE: "unreadable",
               IDENTICAL: "identical"}

MAX_VALUES = 100_000  # non-tensor leaves compared per file
PROGRESS_EVERY = 0.05  # seconds between progress reports


@dataclass(frozen=True)
class PrefixRule:
    """Strip ``prefix`` from the keys of side ``a``, ``b`` or ``both`` where they start with
    it. Prefixes end at a key segment: ``module`` is taken as ``module.``."""

    prefix: str
    side: str = "both"

    def __post_init__(self) -> None:
        if self.prefix and not self.prefix.endswith("."):
            object.__setattr__(self, "prefix", self.prefix + ".")

    def describe(self) -> str:
        where = {"a": "A's keys", "b": "B's keys", "both": "keys"}[self.side]
        return f"'{self.prefix}' stripped from {where}"

    def to_json(self) -> dict[str, str]:
        return {"prefix": self.prefix, "side": self.side}


@dataclass
class Side:
    """One side of an entry: the key in its file and the tensor or the value found there."""

    key: str
    node: Node
    view: TensorInfo | None = None  # the tensor as compared, where not as stored

    @property
    def tensor(self) -> TensorInfo | None:
        return self.view if self.view is not None else self.node.tensor

    def describe(self) -> str:
        t = self.tensor
        if t is not None:
            return f"{t.dtype}[{','.join(map(str, t.shape))}]"
        return _value_text(self.node)


@dataclass
class Entry:
    key: str  # the key both sides share after the prefix rules
    status: str
    a: Side | None = None
    b: Side | None = None
    numbers: Numbers | None = None
    error: str | None = None

    @property
    def is_tensor(self) -> bool:
        side = self.a or self.b
        return side is not None and side.tensor is not None

    @property
    def numel(self) -> int:
        side = self.a or self.b
        return side.tensor.numel if side is not None and side.tensor is not None else 0

    def score(self) -> float:
        """How big the change is, for sorting: changes without numbers (a value, a shape, a
        kind, unreadable data) and NaN/inf appearing first, then relative L2."""
        if self.numbers is None:
            return math.inf if self.status in (SHAPE, KIND, CHANGED, UNREADABLE) else 0.0
        if self.numbers.nan_mismatch:  # a NaN or inf appeared (or went): always worth a look
            return math.inf
        rel = self.numbers.rel_l2
        return rel if math.isfinite(rel) else math.inf

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "status": JSON_STATUS[self.status]}
        for name, side in (("a", self.a), ("b", self.b)):
            if side is None:
                continue
            out[f"key_{name}"] = side.key
            t = side.tensor
            if t is not None:
                out[f"dtype_{name}"] = t.dtype
                out[f"shape_{name}"] = list(t.shape)
            else:
                out[f"value_{name}"] = _value_json(side.node)
        if self.numbers is not None:
            out.update(self.numbers.to_json())
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class DiffResult:
    path_a: str
    path_b: str
    rules: list[PrefixRule]
    entries: list[Entry] = field(default_factory=list)
    auto_rule: bool = False  # the rules were found by matching, not given
    # values on one side only that the other side's format cannot hold (DCP's ``step``
    # against a safetensors file): not compared, not a difference
    unstored: list[Entry] = field(default_factory=list)

    def notes(self) -> list[str]:
        """What was left out of the comparison, in words."""
        out = []
        for side, status, other in (("A", ONLY_A, "B"), ("B", ONLY_B, "A")):
            keys = sorted((e.key for e in self.unstored if e.status == status),
                          key=lambda k: k.count("."))  # top-level ones (step) first
            if keys:
                shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5:,} more"
                                               if len(keys) > 5 else "")
                out.append(f"{len(keys):,} non-tensor entr{'y' if len(keys) == 1 else 'ies'}"
                           f" of {side} not compared ({shown}): {other} is a format that "
                           "holds tensors only")
        return out

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for e in self.entries:
            out[e.status] += 1
        return out

    @property
    def identical(self) -> bool:
        return all(e.status == IDENTICAL for e in self.entries)

    def params_changed(self) -> int:
        """Elements of the tensors found on both sides that are not identical (the larger
        side's count where the shapes differ); tensors on one side only are not counted."""
        total = 0
        for e in self.entries:
            if (e.status != IDENTICAL and e.a is not None and e.b is not None
                    and e.a.tensor is not None and e.b.tensor is not None):
                total += max(_numel(e.a), _numel(e.b))
        return total

    def params_compared(self) -> int:
        """Elements of the tensors found on both sides."""
        return sum(max(_numel(e.a), _numel(e.b)) for e in self.entries
                   if e.a is not None and e.b is not None
                   and e.a.tensor is not None and e.b.tensor is not None)

    def elements_changed(self) -> tuple[int, int]:
        """(elements whose values differ, elements compared one to one)."""
        changed = compared = 0
        for e in self.entries:
            if e.numbers is not None:
                changed += e.numbers.changed
                compared += e.numbers.numel
            elif e.status == IDENTICAL and e.is_tensor:
                compared += e.numel
        return changed, compared

    def change_summary(self) -> str:
        """Both figures of how much changed, in the words the command line prints and the
        window shows: the elements that changed, and what the tensors that differ hold
        ("" when no tensor was compared)."""
        changed, compared = self.elements_changed()
        tensors = sum(1 for e in self.entries if e.status != IDENTICAL and e.a is not None
                      and e.b is not None and e.a.tensor is not None and e.b.tensor is not None)
        if not compared and not tensors:
            return ""
        text = (f"{changed:,} of {compared:,} elements compared changed "
                f"({share_text(changed, compared)})")
        if tensors:
            text += (f", in {tensors:,} tensor{'s' if tensors != 1 else ''} holding "
                     f"{self.params_changed():,} elements")
        return text

    def largest(self, n: int = 10) -> list[Entry]:
        changed = [e for e in self.entries if e.numbers is not None and e.numbers.changed]
        changed.sort(key=lambda e: (-e.score(), -_finite_or_zero(e.numbers.max_abs), e.key))
        return changed[:n]

    def to_json(self) -> dict[str, Any]:
        counts = self.counts()
        out: dict[str, Any] = {
            "a": self.path_a, "b": self.path_b, "identical": self.identical,
            "rules": [r.to_json() for r in self.rules], "rules_found": self.auto_rule,
            "counts": {JSON_STATUS[s]: n for s, n in counts.items()},
            "params_changed": self.params_changed(),
            "largest": [e.key for e in self.largest()],
            "entries": [e.to_json() for e in self.entries]}
        if self.unstored:  # only where something was left out
            out.update(not_compared=[e.to_json() for e in self.unstored], notes=self.notes())
        return out


def share_text(part: int, whole: int) -> str:
    """``part`` of ``whole`` as people read it at a glance: 100%, 3.2%, <0.1%, 0%."""
    if not part or not whole:
        return "0%"
    if part == whole:
        return "100%"
    share = part / whole
    return "<0.1%" if share < 0.001 else (">99.9%" if share > 0.999 else f"{share:.1%}")


def _finite_or_zero(x: float | None) -> float:
    return x if x is not None and math.isfinite(x) else 0.0


def _numel(side: Side | None) -> int:
    return side.tensor.numel if side is not None and side.tensor is not None else 0


# -- keys -----------------------------------------------------------------------------------
def subtree(ckpt: Checkpoint, key: str | None) -> Node:
    """The node at dotted ``key`` (the root for None/"")."""
    if not key:
        return ckpt.root
    by_key = {key_of(node.path()): node for node in ckpt.root.walk() if node.parent is not None}
    node = by_key.get(key)
    if node is None:
        raise KeyError(key)
    return node


def leaves(root: Node) -> dict[str, Node]:
    """Tensors and non-tensor leaf values under ``root``, by their key relative to it."""
    out: dict[str, Node] = {}
    base = len(root.path())
    values = 0
    for node in root.walk():
        if node is root and node.kind != "tensor" and node.children:
            continue  # a container: its leaves follow (a leaf chosen as root is kept)
        if node.kind == "tensor":
            out[key_of(node.path()[base:])] = node
        elif values < MAX_VALUES and (node.kind in ("scalar", "str", "none", "value", "bytes") or (
                node.kind in ("list", "tuple", "set") and node.value is not None)):
            out[key_of(node.path()[base:])] = node
            values += 1
    return out


def _strip(keys: dict[str, Node], rules: list[PrefixRule],
           side: str) -> dict[str, tuple[str, Node]]:
    """Keys after the rules for ``side`` -> (original key, node). A stripped key that
    collides with one already there keeps its original form."""
    mine = sorted((r.prefix for r in rules if r.side in (side, "both")), key=len, reverse=True)
    out: dict[str, tuple[str, Node]] = {}
    stripped: list[tuple[str, str, Node]] = []
    for key, node in keys.items():
        for p in mine:
            if key.startswith(p) and len(key) > len(p):
                stripped.append((key[len(p):], key, node))
                break
        else:
            out[key] = (key, node)
    for new, old, node in stripped:
        out[new if new not in out else old] = (old, node)
    return out


def _tensor_matches(a: dict[str, tuple[str, Node]], b: dict[str, tuple[str, Node]]) -> int:
    return sum(1 for k, (_, n) in a.items() if n.kind == "tensor" and k in b)


def find_rules(keys_a: dict[str, Node], keys_b: dict[str, Node]) -> list[PrefixRule]:
    """A prefix rule that matches more tensor keys than exact matching: strip a leading
    one or two segments from one side (``module.``, ``model.``, ``model_state_dict.``,
    ``state_dict.model.``), which is also how a prefix the other side lacks is added.
    Tried: the prefixes most common among the keys that found no partner."""
    base = _tensor_matches(_strip(keys_a, [], "a"), _strip(keys_b, [], "b"))
    candidates: list[PrefixRule] = []
    for side, mine, other in (("a", keys_a, keys_b), ("b", keys_b, keys_a)):
        counts: Counter[str] = Counter()
        for key, node in mine.items():
            if node.kind != "tensor" or key in other:
                continue
            parts = key.split(".")
            for n in (1, 2):
                if len(parts) > n:
                    counts[".".join(parts[:n]) + "."] += 1
        candidates += [PrefixRule(p, side) for p, _ in counts.most_common(8)]
    best: tuple[int, list[PrefixRule]] = (base, [])
    for rule in candidates:
        n = _tensor_matches(_strip(keys_a, [rule], "a"), _strip(keys_b, [rule], "b"))
        if n > best[0]:
            best = (n, [rule])
    return best[1]


# -- values -----------------------------------------------------------------------------------
def _value_json(node: Node) -> Any:
    from ckpt_inspector.core.summary import jsonable

    return jsonable(node.value)


def _value_text(node: Node) -> str:
    from ckpt_inspector.core.summary import format_value

    return format_value(node)


def _same_value(x: Node, y: Node) -> bool:
    if x.kind != y.kind:
        return False
    vx, vy = x.value, y.value
    if isinstance(vx, float) and isinstance(vy, float) and math.isnan(vx) and math.isnan(vy):
        return True
    try:
        return bool(vx == vy) and type(vx) is type(vy)
    except Exception:  # exotic values: compare their text
        return repr(vx) == repr(vy)


# formats whose files hold tensors and nothing else: a value (DCP's ``step``) that the
# other side holds is not a difference a conversion to them could have kept
TENSORS_ONLY = frozenset({"safetensors", "gguf"})


def holds_tensors_only(ckpt: Checkpoint) -> bool:
    """Whether ``ckpt`` is of a format (or made of files of formats) that hold only
    tensors: safetensors, GGUF (whose key/values are metadata, not entries)."""
    if ckpt.format in TENSORS_ONLY:
        return True
    kinds = {f.get("format") for f in ckpt.files if f.get("format") != "hf-index"}
    return bool(kinds) and kinds <= TENSORS_ONLY


# -- the comparison -----------------------------------------------------------------------------
def _file_order(entry: Entry) -> tuple[str, int]:
    t = entry.a.tensor if entry.a is not None else None
    if t is None or t.storage is None:
        return ("", 0)
    return (t.storage.key, t.storage_offset)


def diff(a: Checkpoint, b: Checkpoint, rules: list[PrefixRule] | None = None,
         key_a: str | None = None, key_b: str | None = None, auto: bool = True,
         cancel: CancelToken | None = None) -> Job[DiffResult]:
    """Compare ``a`` with ``b`` (or their subtrees at ``key_a``/``key_b``). ``rules`` are
    applied as given; with none and ``auto``, rules that match more tensor keys are found.
    Raises KeyError for a subtree key that is not there, :class:`Cancelled` on ``cancel``."""
    root_a = subtree(a, key_a)
    root_b = subtree(b, key_b)
    keys_a, keys_b = leaves(root_a), leaves(root_b)
    found = False
    if not rules and auto:
        rules = find_rules(keys_a, keys_b)
        found = bool(rules)
    rules = list(rules or [])
    na, nb = _strip(keys_a, rules, "a"), _strip(keys_b, rules, "b")
    result = DiffResult(a.path, b.path, rules, auto_rule=found)
    pairs: list[Entry] = []
    order = list(na) + [k for k in nb if k not in na]
    cannot = (holds_tensors_only(a), holds_tensors_only(b))
    for key in order:
        sa = Side(*na[key]) if key in na else None
        sb = Side(*nb[key]) if key in nb else None
        entry = _entry(key, sa, sb)
        if entry.status in (ONLY_A, ONLY_B) and not entry.is_tensor and \
                cannot[entry.status == ONLY_A]:
            result.unstored.append(entry)  # a value the other side's format cannot hold
            continue
        result.entries.append(entry)
        if entry.status in (IDENTICAL, DTYPE) and entry.is_tensor:
            pairs.append(entry)
    pairs.sort(key=_file_order)  # read A in file order
    total = sum(e.a.tensor.nbytes + e.b.tensor.nbytes for e in pairs)
    done = 0
    buffers = Buffers(RAW_BLOCK) if pairs else None
    yield Progress("comparing", 0, total)
    last = time.monotonic()
    for entry in pairs:
        ta, tb = entry.a.tensor, entry.b.tensor
        try:
            _compare(entry, ta, tb, cancel, buffers)
        except Cancelled:
            raise
        except (CheckpointError, OSError, ValueError) as err:
            entry.status, entry.numbers, entry.error = UNREADABLE, None, str(err)
        done += ta.nbytes + tb.nbytes
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY or entry is pairs[-1]:  # not one signal per key
            last = now
            yield Progress("comparing", done, total, entry.key)
        elif cancel is not None and cancel.is_set():
            raise Cancelled()
    return result


def _entry(key: str, sa: Side | None, sb: Side | None) -> Entry:
    """The entry of a key before any data is read: its status from what each side holds
    (a pair of tensors of one shape stays IDENTICAL or DTYPE until compared)."""
    if sb is None:
        return Entry(key, ONLY_A, sa)
    if sa is None:
        return Entry(key, ONLY_B, None, sb)
    if (sa.tensor is None) != (sb.tensor is None):
        return Entry(key, KIND, sa, sb)
    if sa.tensor is None or sb.tensor is None:
        return Entry(key, IDENTICAL if _same_value(sa.node, sb.node) else CHANGED, sa, sb)
    lost = next((t.problem for t in (sa.tensor, sb.tensor) if not t.shape_known), None)
    if lost:  # a tensor something promised whose file is missing: no shape to compare
        return Entry(key, UNREADABLE, sa, sb, error=lost)
    _same_elements(sa, sb)
    if tuple(sa.tensor.shape) != tuple(sb.tensor.shape):
        return Entry(key, SHAPE, sa, sb)
    return Entry(key, DTYPE if sa.tensor.dtype != sb.tensor.dtype else IDENTICAL, sa, sb)


def _same_elements(sa: Side, sb: Side) -> None:
    """torch's ``float4_e2m1fn_x2`` (two elements a byte) against ``float4_e2m1fn`` by
    element (safetensors' ``F4``): the torch side compared as its elements, so that a file
    and its conversion are the same tensor (see :mod:`ckpt_inspector.core.decoded`)."""
    from ckpt_inspector.core.decoded import F4, F4_X2, f4_elements

    ta, tb = sa.tensor, sb.tensor
    if ta is None or tb is None or {ta.dtype, tb.dtype} != {F4, F4_X2}:
        return
    side = sa if ta.dtype == F4_X2 else sb
    side.view = f4_elements(side.node.tensor) if side.node.tensor is not None else None


def _same_components(ta: TensorInfo, tb: TensorInfo, cancel: CancelToken | None,
                     buffers: Buffers | None) -> bool:
    """Quantization parameters and component tensors (per-channel scales, sparse indices
    and values) are the same on both sides."""
    if ta.quantization != tb.quantization:
        return False
    ca, cb = ta.components or {}, tb.components or {}
    if ca.keys() != cb.keys():
        return False
    return all(ca[k].shape == cb[k].shape and ca[k].dtype == cb[k].dtype
               and same_bytes(ca[k], cb[k], cancel, buffers) for k in ca)


def _compare(entry: Entry, ta: TensorInfo, tb: TensorInfo, cancel: CancelToken | None,
             buffers: Buffers | None = None) -> None:
    if ta.numel == 0:
        entry.numbers = Numbers(0) if entry.status == DTYPE else None
        return
    if ta.layout != "strided" or tb.layout != "strided":  # sparse, nested: by their parts
        if ta.layout != tb.layout:
            entry.status, entry.error = KIND, f"layout {ta.layout} → {tb.layout}"
        elif entry.status == IDENTICAL and not _same_components(ta, tb, cancel, buffers):
            entry.status = CHANGED
            entry.error = f"{ta.layout} tensors are compared by their parts: they differ"
        return
    if entry.status == IDENTICAL:
        byteorder_a = ta.storage.source.byteorder if ta.storage and ta.storage.source else ""
        byteorder_b = tb.storage.source.byteorder if tb.storage and tb.storage.source else ""
        if same_place(ta, tb):
            return
        if (byteorder_a == byteorder_b and _same_components(ta, tb, cancel, buffers)
                and same_bytes(ta, tb, cancel, buffers)):
            return
        entry.status = CHANGED
    entry.numbers = numbers(ta, tb, cancel)
    if entry.status == CHANGED and entry.numbers.changed == 0 and not entry.numbers.nan_mismatch:
        # different bytes, same numbers: -0.0 against 0.0, NaN payloads, byte order,
        # quantized integers with other scales that dequantize alike
        entry.numbers.note = "the same values stored with different bits (such as -0.0 and 0.0)"
