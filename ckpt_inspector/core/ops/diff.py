"""Compare two checkpoints: which keys, shapes, dtypes and values changed.

:func:`diff` is a generator that yields :class:`Progress` and returns a :class:`DiffResult`.
Keys are matched exactly, or after prefix rules (``module.`` of DataParallel, ``model.`` of
Lightning, ``model_state_dict.`` of a training checkpoint) given by the caller or found
automatically when they match more keys. Tensors of the same shape and dtype are first
compared byte for byte, in chunks read in lockstep from both files (exact, and as fast as
reading the two files once); only a pair that differs is read again as numbers, in float64,
for its max/mean absolute difference, relative L2 difference and cosine similarity. Neither
file is ever loaded whole, and no code in either is run.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.ops.stats import (
    CHUNK_ELEMENTS,
    Histogram,
    element_chunks,
    format_number,
)
from ckpt_inspector.core.progress import Cancelled, CancelToken, Job, Progress
from ckpt_inspector.core.tensors import mapped_file, to_numpy
from ckpt_inspector.core.tree import Checkpoint, Node, TensorInfo, key_of

# statuses, in the order a report lists them
ONLY_A, ONLY_B, KIND, SHAPE, DTYPE, CHANGED, UNREADABLE, IDENTICAL = (
    "only in A", "only in B", "kind changed", "shape changed", "dtype changed",
    "values changed", "unreadable", "identical")
STATUSES = (ONLY_A, ONLY_B, KIND, SHAPE, DTYPE, CHANGED, UNREADABLE, IDENTICAL)
JSON_STATUS = {ONLY_A: "only_a", ONLY_B: "only_b", KIND: "kind", SHAPE: "shape",
               DTYPE: "dtype", CHANGED: "changed", UNREADABLE: "unreadable",
               IDENTICAL: "identical"}

RAW_BLOCK = 4 << 20  # bytes compared at a time
FAULT_AROUND = 2 << 20  # fault-around (64 KiB) and large page-cache folios (up to 2 MiB)
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
class Numbers:
    """How two tensors of the same shape differ, computed in float64."""

    numel: int
    changed: int = 0  # elements whose values differ (NaN against NaN counts as equal)
    max_abs: float = 0.0
    mean_abs: float = 0.0
    rel_l2: float = 0.0  # ||A - B|| / max(||A||, ||B||): 0 same, 1 unrelated, 2 opposite
    cosine: float | None = None
    nan_mismatch: int = 0  # positions where only one side is NaN or ±inf differs
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        def num(x: float | None) -> float | str | None:
            if x is None or math.isfinite(x):
                return x
            return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
        return {"numel": self.numel, "changed": self.changed, "max_abs": num(self.max_abs),
                "mean_abs": num(self.mean_abs), "rel_l2": num(self.rel_l2),
                "cosine": num(self.cosine), "nan_mismatch": self.nan_mismatch,
                **({"note": self.note} if self.note else {})}


@dataclass
class Side:
    """One side of an entry: the key in its file and the tensor or the value found there."""

    key: str
    node: Node

    @property
    def tensor(self) -> TensorInfo | None:
        return self.node.tensor

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

    def largest(self, n: int = 10) -> list[Entry]:
        changed = [e for e in self.entries if e.numbers is not None and e.numbers.changed]
        changed.sort(key=lambda e: (-e.score(), -_finite_or_zero(e.numbers.max_abs), e.key))
        return changed[:n]

    def to_json(self) -> dict[str, Any]:
        counts = self.counts()
        return {"a": self.path_a, "b": self.path_b, "identical": self.identical,
                "rules": [r.to_json() for r in self.rules], "rules_found": self.auto_rule,
                "counts": {JSON_STATUS[s]: n for s, n in counts.items()},
                "params_changed": self.params_changed(),
                "largest": [e.key for e in self.largest()],
                "entries": [e.to_json() for e in self.entries]}


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


# -- bytes and numbers ------------------------------------------------------------------------
def raw_blocks(info: TensorInfo, size: int | None = None,
               buffer: bytearray | None = None) -> Iterator[memoryview]:
    """The tensor's bytes in C order, ``size`` at a time (views of a reused buffer,
    ``buffer`` if given)."""
    size = size or RAW_BLOCK
    if info.storage is None or info.storage.source is None or info.problem:
        raise CheckpointError(info.problem or "this tensor has no data in the file")
    if info.layout != "strided":
        raise CheckpointError(f"{info.layout} tensors have no dense values to compare")
    item = info.itemsize
    if info.is_contiguous():
        yield from info.storage.source.blocks(info.storage_offset * item, info.numel * item,
                                              size, buffer)
        return
    view = to_numpy(info)
    flat_rows = view.reshape(view.shape[0], -1) if view.ndim > 1 else view.reshape(1, -1)
    row_bytes = max(1, flat_rows.shape[1] * view.itemsize)
    step = max(1, size // row_bytes)
    for r in range(0, flat_rows.shape[0], step):
        yield memoryview(np.ascontiguousarray(flat_rows[r:r + step]).reshape(-1).view(np.uint8))


class _Buffers:
    """What a byte comparison reuses from one tensor to the next: a read buffer per side
    and the comparison's output (fresh ones per tensor cost more than the reading)."""

    def __init__(self, size: int):
        self.size = size
        self.out = np.empty(size // 8 + 1, dtype=bool)
        self._read: tuple[bytearray, bytearray] | None = None

    def read(self) -> tuple[bytearray, bytearray]:
        """Read buffers for A and B (only tensors that are not mapped in place need them)."""
        if self._read is None:
            self._read = (bytearray(self.size), bytearray(self.size))
        return self._read

    def equal(self, x: memoryview, y: memoryview) -> bool:
        n = len(x)
        words = n // 8
        if words:
            head = slice(0, words * 8)
            wx = np.frombuffer(x[head], np.uint64)
            wy = np.frombuffer(y[head], np.uint64)
            out = self.out[:words] if words <= len(self.out) else None
            if not np.equal(wx, wy, out=out).all():
                return False
        return x[words * 8:] == y[words * 8:]


def _paired(ia: Iterator[Any], ib: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
    """Pieces of the same length from two streams of arrays (or memoryviews) whose pieces
    may be cut differently. Each stream is advanced only when its piece is used up, so a
    piece that is a view of a reused buffer stays valid while it is paired."""
    xa = xb = None
    try:
        while True:
            if xa is None or not len(xa):
                xa = next(ia, None)
            if xb is None or not len(xb):
                xb = next(ib, None)
            if xa is None or xb is None:
                if xa is not None or xb is not None:
                    raise ValueError("the two tensors have different numbers of elements")
                return
            n = min(len(xa), len(xb))
            yield xa[:n], xb[:n]
            xa, xb = xa[n:], xb[n:]
    finally:
        ia.close()
        ib.close()


def _mapped_bytes(info: TensorInfo) -> tuple[Any, int] | None:
    """(the file's read-only map, offset of the tensor's first byte) for a contiguous tensor
    that lies uncompressed in a file, else None."""
    src = info.storage.source if info.storage is not None else None
    span = src.file_span() if src is not None else None
    if span is None or not info.is_contiguous() or info.problem or info.layout != "strided":
        return None
    start = span[1] + info.storage_offset * info.itemsize
    mm = mapped_file(span[0])
    if start + info.nbytes > len(mm):
        raise CheckpointError(f"{span[0]}: storage data runs past the end of the file")
    return mm, start


def _release(mm: Any, start: int, length: int) -> None:
    """Drop the pages of ``[start, start+length)`` from this process's map (they stay in
    the page cache): resident memory stays at one block however big the files are."""
    # the kernel maps more than the faulting page (the aligned 64 KiB around it, or a
    # whole large folio of the page cache): drop a margin on both sides too
    first = max(0, start - FAULT_AROUND)
    first -= first % mmap.PAGESIZE
    end = min(len(mm), start + length + FAULT_AROUND)
    with contextlib.suppress(AttributeError, ValueError, OSError):  # not Linux
        mm.madvise(mmap.MADV_DONTNEED, first, end - first)


def _same_mapped(a: tuple[Any, int], b: tuple[Any, int], nbytes: int, buffers: _Buffers,
                 cancel: CancelToken | None) -> bool:
    """Compare two byte ranges of mapped files in place: no copy, one block resident."""
    (ma, sa), (mb, sb) = a, b
    words = sa % 8 == 0 and sb % 8 == 0
    kind, width = (np.uint64, 8) if words else (np.uint8, 1)
    step = buffers.size
    for pos in range(0, nbytes, step):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        n = min(step, nbytes - pos)
        whole = n - n % width
        x = np.frombuffer(ma, kind, whole // width, sa + pos)
        y = np.frombuffer(mb, kind, whole // width, sb + pos)
        out = buffers.out[:len(x)] if len(x) <= len(buffers.out) else None
        same = bool(np.equal(x, y, out=out).all()) and (
            ma[sa + pos + whole:sa + pos + n] == mb[sb + pos + whole:sb + pos + n])
        del x, y
        _release(ma, sa + pos, n)
        _release(mb, sb + pos, n)
        if not same:
            return False
    return True


def same_bytes(a: TensorInfo, b: TensorInfo, cancel: CancelToken | None = None,
               buffers: _Buffers | None = None) -> bool:
    """True when the two tensors hold the same bytes: compared in place in memory-mapped
    files where both are contiguous there, else read in lockstep."""
    buffers = buffers or _Buffers(RAW_BLOCK)
    if a.nbytes != b.nbytes:
        return False
    ma, mb = _mapped_bytes(a), _mapped_bytes(b)
    if ma is not None and mb is not None:
        return _same_mapped(ma, mb, a.nbytes, buffers, cancel)
    buf_a, buf_b = buffers.read()
    pieces = _paired(raw_blocks(a, buffers.size, buf_a), raw_blocks(b, buffers.size, buf_b))
    try:
        for xa, xb in pieces:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            if not buffers.equal(xa, xb):
                return False
        return True
    finally:
        pieces.close()


def _same_place(a: TensorInfo, b: TensorInfo) -> bool:
    """Both are the same bytes of the same file (a file compared with itself)."""
    sa, sb = a.storage, b.storage
    if sa is None or sb is None or sa.source is None or sb.source is None:
        return False
    fa, fb = sa.source.file_span(), sb.source.file_span()
    return (fa is not None and fa == fb and a.dtype == b.dtype and a.shape == b.shape
            and a.stride == b.stride and a.storage_offset == b.storage_offset)


class _Acc:
    """float64 sums over pairs of chunks. Values beyond 2**480 in magnitude (only float64
    tensors have them) are divided by a common power of two first, so that squares and
    their sums cannot overflow; the ratios (relative L2, cosine) do not depend on it."""

    LIMIT = 2.0**480

    def __init__(self, numel: int):
        self.n = Numbers(numel)
        self.abs_sum = self.d2 = self.a2 = self.b2 = self.ab = 0.0
        self.scale = 1.0
        self.finite = 0

    def _rescale(self, biggest: float) -> None:
        new = 2.0 ** (math.frexp(biggest)[1] - 480)
        f = self.scale / new
        self.a2 *= f * f
        self.b2 *= f * f
        self.d2 *= f * f
        self.ab *= f * f
        self.abs_sum *= f
        self.scale = new

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a = a.astype(np.float64, copy=False)
        b = b.astype(np.float64, copy=False)
        fa, fb = np.isfinite(a), np.isfinite(b)
        both = fa & fb
        if not both.all():
            nan_a, nan_b = np.isnan(a), np.isnan(b)
            special = ~both
            # equal specials (NaN and NaN, inf and inf) are not changes; the rest are
            same_special = special & ((nan_a & nan_b) | (~nan_a & ~nan_b & (a == b)))
            mismatched = int(np.count_nonzero(special & ~same_special))
            self.n.nan_mismatch += mismatched
            self.n.changed += mismatched
            a, b = a[both], b[both]
        if not len(a):
            return
        biggest = max(float(np.abs(a).max()), float(np.abs(b).max()))
        if biggest > self.LIMIT * self.scale:
            self._rescale(biggest)
        if self.scale != 1.0:
            a, b = a / self.scale, b / self.scale
        d = a - b
        self.n.changed += int(np.count_nonzero(d))
        ad = np.abs(d)
        with np.errstate(over="ignore"):
            self.n.max_abs = max(self.n.max_abs, float(ad.max()) * self.scale)
        self.abs_sum += float(ad.sum())
        self.d2 += float(np.dot(d, d))
        self.a2 += float(np.dot(a, a))
        self.b2 += float(np.dot(b, b))
        self.ab += float(np.dot(a, b))
        self.finite += len(d)

    def finish(self) -> Numbers:
        n = self.n
        with np.errstate(over="ignore"):
            n.mean_abs = float(np.float64(self.abs_sum) * self.scale / self.finite
                               ) if self.finite else 0.0
        norm_a, norm_b, d = math.sqrt(self.a2), math.sqrt(self.b2), math.sqrt(self.d2)
        top = max(norm_a, norm_b)
        n.rel_l2 = d / top if top else 0.0  # both all zero: then d is zero too
        denom = norm_a * norm_b
        n.cosine = max(-1.0, min(1.0, self.ab / denom)) if denom else None
        if n.nan_mismatch:  # A − B is NaN or inf there: no finite summary of it is honest
            n.max_abs = n.mean_abs = n.rel_l2 = math.nan
            n.cosine = None
        return n


def _values(info: TensorInfo) -> Iterator[np.ndarray]:
    chunks = element_chunks(info, CHUNK_ELEMENTS)
    try:
        for values, _index in chunks:
            yield values
    finally:
        chunks.close()


def numbers(a: TensorInfo, b: TensorInfo, cancel: CancelToken | None = None) -> Numbers:
    """Differences of two tensors with the same number of elements, in float64.
    Complex tensors are compared by magnitude (as the statistics are)."""
    acc = _Acc(a.numel)
    pieces = _paired(_values(a), _values(b))
    try:
        for va, vb in pieces:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            acc.add(va, vb)
    finally:
        pieces.close()
    out = acc.finish()
    if "complex" in a.dtype or "complex" in b.dtype:
        out.note = "complex values compared by magnitude"
    return out


def difference_histogram(a: TensorInfo, b: TensorInfo, numbers_: Numbers, bins: int = 100,
                         cancel: CancelToken | None = None) -> Job[Histogram]:
    """Counts of A − B over ``bins`` equal bins from −max|A−B| to +max|A−B| (both finite),
    exact over every element; returns a :class:`~ckpt_inspector.core.ops.stats.Histogram`
    whose ``nan`` counts the positions where the difference is not finite."""
    span = numbers_.max_abs or 0.5
    edges = np.linspace(-span, span, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    special = done = 0
    total = a.numel
    pieces = _paired(_values(a), _values(b))
    try:
        for va, vb in pieces:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            d = va.astype(np.float64) - vb.astype(np.float64)
            finite = np.isfinite(d)
            if not finite.all():
                special += int(len(d) - np.count_nonzero(finite))
                d = d[finite]
            counts += np.histogram(d, bins=bins, range=(-span, span))[0]
            done += len(va)
            if done % (1 << 22) < len(va) or done == total:
                yield Progress("difference histogram", done, total)
    finally:
        pieces.close()
    return Histogram(edges, counts, None, special, 0, 0)


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
    for key in order:
        sa = Side(*na[key]) if key in na else None
        sb = Side(*nb[key]) if key in nb else None
        if sb is None:
            result.entries.append(Entry(key, ONLY_A, sa))
        elif sa is None:
            result.entries.append(Entry(key, ONLY_B, None, sb))
        elif (sa.tensor is None) != (sb.tensor is None):
            result.entries.append(Entry(key, KIND, sa, sb))
        elif sa.tensor is None:
            same = _same_value(sa.node, sb.node)
            result.entries.append(Entry(key, IDENTICAL if same else CHANGED, sa, sb))
        elif tuple(sa.tensor.shape) != tuple(sb.tensor.shape):
            result.entries.append(Entry(key, SHAPE, sa, sb))
        else:
            entry = Entry(key, DTYPE if sa.tensor.dtype != sb.tensor.dtype else IDENTICAL,
                          sa, sb)
            result.entries.append(entry)
            pairs.append(entry)
    pairs.sort(key=_file_order)  # read A in file order
    total = sum(e.a.tensor.nbytes + e.b.tensor.nbytes for e in pairs)
    done = 0
    buffers = _Buffers(RAW_BLOCK) if pairs else None
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


def _same_components(ta: TensorInfo, tb: TensorInfo, cancel: CancelToken | None,
                     buffers: _Buffers | None) -> bool:
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
             buffers: _Buffers | None = None) -> None:
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
        if _same_place(ta, tb):
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


def describe_numbers(n: Numbers) -> str:
    if not n.changed and not n.nan_mismatch:
        return "the same values" + (f" ({n.note})" if n.note else "")
    parts = [f"{n.changed:,} of {n.numel:,} changed"]
    if n.nan_mismatch:
        parts.append(f"{n.nan_mismatch:,} NaN/inf on one side only")
    if n.changed > n.nan_mismatch:  # finite values changed too
        parts += [f"max |A−B| {format_number(n.max_abs)}",
                  f"mean |A−B| {format_number(n.mean_abs)}",
                  f"rel L2 {format_number(n.rel_l2)}"]
        if n.cosine is not None:
            parts.append(f"cos {format_number(n.cosine, 9)}")
    if n.note:
        parts.append(n.note)
    return ", ".join(parts)
