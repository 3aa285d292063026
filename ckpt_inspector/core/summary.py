"""Totals and plain-data descriptions of a checkpoint, shared by the CLI's JSON and the GUI."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii as _js
from operator import attrgetter
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.chunks import SLICE, in_slices
from ckpt_inspector.core.keytree import roll_up
from ckpt_inspector.core.memory import memory_totals
from ckpt_inspector.core.tensors import DataSource
from ckpt_inspector.core.tree import UNKNOWN_DTYPE, Checkpoint, Node, TensorInfo, key_of

MAX_VALUES = 1000


def human_bytes(n: float) -> str:
    if isinstance(n, int) and abs(n) >= 1 << 80:  # a size a hostile header claims: no float
        return f"about 10^{len(str(abs(n))) - 1} B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def human_count(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def int_text(value: int) -> str:
    """``str(value)``, except for integers too long to print (Python refuses > 4300 digits)."""
    if value.bit_length() > 12_000:
        return f"<int of {value.bit_length():,} bits>"
    return str(value)


MAX_TEXT = 10_000  # characters of a string value given whole; a longer one is cut


def _cut(text: str) -> str:
    """A string value, its first :data:`MAX_TEXT` characters if longer (a file may hold one
    1 MB string referenced 100,000 times: 100 GB of output, given whole each time)."""
    if len(text) <= MAX_TEXT:
        return text
    return f"{text[:MAX_TEXT]}… ({len(text):,} characters in all)"


def jsonable(value: Any, limit: int = 100) -> Any:
    """A JSON-safe version of a value (NaN, complex and huge ints become strings, long
    strings are cut)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, int):
        return value if value.bit_length() <= 63 else int_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        out = [jsonable(v) for v in value[:limit]]
        if len(value) > limit:
            out.append(f"… {len(value) - limit:,} more")
        return out
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in list(value.items())[:limit]}
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return _cut(str(value))


def format_value(node: Node, limit: int = 100) -> str:
    """A leaf's value as people read it: ``7``, ``'adam'``, ``(0.9, 0.999)``, ``None``."""
    if node.kind == "none":
        return "None"
    if node.kind == "str":
        value = node.value
        text = repr(value if len(value) <= limit else value[:limit])  # not all of a long one
    elif node.kind in ("list", "tuple", "set") and node.value is not None:
        parts = []
        size = 0
        for v in node.value:
            item = int_text(v) if isinstance(v, int) and not isinstance(v, bool) else repr(v)
            size += len(item) + 2
            if size > limit:
                parts.append(f"… {len(node.value):,} items")
                break
            parts.append(item)
        inner = ", ".join(parts)
        if node.kind == "tuple":
            text = f"({inner}{',' if len(node.value) == 1 else ''})"
        elif node.kind == "set":
            text = "{" + inner + "}"
        else:
            text = f"[{inner}]"
        return text
    elif node.kind == "bytes":
        text = f"<{node.note}>"
    elif isinstance(node.value, int) and not isinstance(node.value, bool):
        text = int_text(node.value)
    elif isinstance(node.value, str):
        text = node.value[:limit + 1]
    else:
        text = str(node.value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def storage_identity(t: TensorInfo) -> Any:
    st = t.storage
    if st is None or st.source is None:
        return None
    return id(st.source)


def walk_paths(root: Node) -> Iterator[tuple[list[Any], Node]]:
    """``(path, node)`` for ``root`` and every node below it, in :meth:`Node.walk`'s order,
    each path built from its parent's (not by walking up from every node)."""
    stack: list[tuple[list[Any], Node]] = [([], root)]
    pop, push = stack.pop, stack.append
    while stack:
        path, node = pop()
        yield path, node
        kids = node.children
        if kids:
            for child in reversed(kids):
                push(([*path, child.key], child))


def tensor_paths(ckpt: Checkpoint) -> list[tuple[list[Any], Node]]:
    """What :meth:`Checkpoint.tensors` yields, as a list, faster."""
    return [(p, n) for p, n in with_tensor(ckpt.root) if n.kind == "tensor"]


def with_tensor(root: Node) -> list[tuple[list[Any], Node]]:
    """``(path, node)`` for every node that has a ``tensor``, in :meth:`Node.walk`'s
    order: :func:`walk_paths` for them, without a step per node for the leaves of a
    state_dict."""
    out: list[tuple[list[Any], Node]] = []
    add = out.append
    if root.tensor is not None:
        add(([], root))
    stack: list[tuple[list[Any], Iterator[Node]]] = [([], iter(root.children))]
    while stack:
        path, kids = stack[-1]
        for child in kids:
            if child.tensor is not None:
                add(([*path, child.key], child))
            if child.children:
                stack.append(([*path, child.key], iter(child.children)))
                break
        else:
            stack.pop()
    return out


def shared_storage(ckpt: Checkpoint,
                   pairs: list[tuple[list[Any], Node]] | None = None) -> dict[int, list[str]]:
    """Tensor keys by storage, for storages used by more than one tensor (``pairs``: the
    checkpoint's :func:`tensor_paths`, when the caller has them)."""
    pairs = tensor_paths(ckpt) if pairs is None else pairs
    idents = [storage_identity(node.tensor) for _path, node in pairs]
    counts = Counter(idents)
    counts.pop(None, None)
    if not counts or max(counts.values()) < 2:
        return {}
    users: dict[Any, list[str]] = defaultdict(list)
    for ident, (path, _node) in zip(idents, pairs):
        if ident is not None and counts[ident] > 1:
            users[ident].append(key_of(path))
    return dict(users)


def tensor_record(path: list[Any], node: Node, shared: dict[int, list[str]]) -> dict[str, Any]:
    t = node.tensor
    assert t is not None
    key = key_of(path)
    rec: dict[str, Any] = {
        "key": key,
        "path": [jsonable(k) for k in path],
        "dtype": t.dtype,
        "shape": list(t.shape),
        "numel": t.numel if t.shape_known else None,  # unknown: its file is missing
        "nbytes": t.nbytes if t.shape_known else None,
        "device": t.device,
        "stride": list(t.stride) if t.stride is not None else None,
        "storage_offset": t.storage_offset,
        "requires_grad": t.requires_grad,
        "role": node.role,
        "in_state_dict": node.in_state_dict(),
    }
    if t.storage is not None:
        rec["storage"] = {"key": t.storage.key, "dtype": t.storage.dtype,
                          "nbytes": t.storage.nbytes, "location": t.storage.location}
    others = shared.get(storage_identity(t)) if storage_identity(t) is not None else None
    if others:
        # the first 20 others: a linear step per tensor even when thousands share a storage
        rec["shares_storage_with"] = [k for k in others[:21] if k != key][:20]
    if t.layout != "strided":
        rec["layout"] = t.layout
    if t.quantization:
        rec["quantization"] = {k: jsonable(v) for k, v in t.quantization.items()}
    if t.subclass:
        rec["subclass"] = t.subclass
    if t.problem:
        rec["problem"] = t.problem
    if t.file is not None:  # only in checkpoints made of several files
        rec["file"] = t.file
    if t.pieces is not None:
        rec["pieces"] = t.pieces
    return rec


_ITEMSIZE = {name: d.itemsize for name, d in dtypes.KNOWN.items()}
_NOT_SAVED = ("non-persistent buffer", "attribute")  # Node.in_state_dict


def tensor_json(path: list[Any], node: Node, shared: dict[int, list[str]],
                cache: dict[tuple[Any, ...], tuple[str, str]] | None = None) -> str:
    """``json.dumps(tensor_record(path, node, shared))``, written directly for the common
    tensor (a plain strided tensor, its storage its own, keys and names strings): a
    checkpoint holds up to hundreds of thousands, and the dict plus the encoder take ~10 µs
    each. Anything else goes through :func:`tensor_record`.

    ``cache`` (one dict for all the tensors of a checkpoint) keeps the text of what tensors
    have in common (dtype, shape, storage, file, ...): most tensors then cost a lookup."""
    t = node.tensor
    st = t.storage if t is not None else None
    if st is None or st.source is None or type(t) is not TensorInfo or \
            t.layout != "strided" or t.quantization or t.subclass or t.pieces is not None \
            or (shared and id(st.source) in shared):
        return json.dumps(tensor_record(path, node, shared))
    shape, stride = t.shape, t.stride
    offset, grad, role, numel = t.storage_offset, t.requires_grad, node.role, st.numel
    if type(shape) is not tuple or not (stride is None or type(stride) is tuple) or \
            type(offset) is not int or type(numel) is not int or type(grad) is not bool:
        return json.dumps(tensor_record(path, node, shared))
    # each dimension an int (checked here, not by the cache: 2.0 == 2 and True == 1)
    for s in shape:
        if type(s) is not int:
            return json.dumps(tensor_record(path, node, shared))
    if stride is not None:
        for s in stride:
            if type(s) is not int:
                return json.dumps(tensor_record(path, node, shared))
    one = len(path) == 1
    if not ((one and type(path[0]) is str) or all(type(k) is str for k in path)):
        return json.dumps(tensor_record(path, node, shared))
    try:
        key = _js(path[0] if one else ".".join(path))
        keys = key if one else ", ".join(map(_js, path))
        store = key if one and type(st.key) is str and st.key == path[0] else _js(st.key)
        sig = (t.dtype, shape, stride, offset, grad, role, t.device, st.dtype, numel,
               st.location, t.problem, t.file)
        parts = cache.get(sig) if cache is not None else None
        if parts is None:
            parts = _shared_parts(t, st, role)
            if cache is not None:
                cache[sig] = parts
    except TypeError:  # a name that is not a string
        return json.dumps(tensor_record(path, node, shared))
    return f'{{"key": {key}, "path": [{keys}], {parts[0]}{store}{parts[1]}'


def _shared_parts(t: TensorInfo, st: Any, role: str | None) -> tuple[str, str]:
    """The text of a common tensor's record around its storage key (see
    :func:`tensor_json`): everything but its own key and path."""
    numel = math.prod(t.shape)
    size = _ITEMSIZE.get(t.dtype)
    stride = "null" if t.stride is None else str(list(t.stride))
    head = (f'"dtype": {_js(t.dtype)}, "shape": {list(t.shape)}, "numel": {numel}, '
            f'"nbytes": {numel * (size or 0)}, "device": {_js(t.device)}, '
            f'"stride": {stride}, "storage_offset": {t.storage_offset}, '
            f'"requires_grad": {"true" if t.requires_grad else "false"}, '
            f'"role": {"null" if role is None else _js(role)}, '
            f'"in_state_dict": {"false" if role in _NOT_SAVED else "true"}, '
            f'"storage": {{"key": ')
    tail = (f', "dtype": {_js(st.dtype)}, '
            f'"nbytes": {st.numel * (_ITEMSIZE.get(st.dtype) or 1)}, '
            f'"location": {_js(st.location)}}}')
    if t.problem:
        tail += f', "problem": {_js(t.problem)}'
    if t.file is not None:
        tail += f', "file": {_js(t.file)}'
    return head, tail + "}"


_VALUE_KINDS = frozenset({"scalar", "str", "none", "value", "bytes"})
_SEQUENCE_KINDS = frozenset({"list", "tuple", "set"})


def value_records(ckpt: Checkpoint, limit: int = MAX_VALUES) -> list[dict[str, Any]]:
    """Non-tensor leaves (epoch, loss, hyper-parameters, ...) with their paths."""
    out = []
    stack = [ckpt.root]
    pop, extend = stack.pop, stack.extend
    while stack:  # Node.walk, inlined: a state_dict holds 100,000s of tensors
        node = pop()
        kind = node.kind
        if (kind in _VALUE_KINDS or (kind in _SEQUENCE_KINDS and node.value is not None)) \
                and node.parent is not None:
            path = node.path()
            out.append({"key": key_of(path), "path": [jsonable(k) for k in path],
                        "type": node.type_name, "value": jsonable(node.value)})
            if len(out) >= limit:
                break
        if node.children:
            extend(reversed(node.children))
    return out


def top_values(root: Node, limit: int = 24) -> tuple[list[tuple[str, Node]], int]:
    """The leaf values a person looks for first (epoch, loss, lr, versions), nearest the
    root, outside modules; and how many such values there are in all."""
    found: list[tuple[int, str, Node]] = []
    stack: list[tuple[Node, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        for child in node.children:
            kind = child.kind
            if (kind == "tensor" and child.value is None) or kind == "module" or \
                    child.role == "attribute":
                continue  # tensors first: a state_dict holds up to 100,000s of them
            if child.kind in ("scalar", "str", "none", "value") or child.value is not None:
                found.append((depth, key_of(child.path()), child))
            elif child.children and depth < 2 and child.kind != "tensor":
                stack.append((child, depth + 1))
    found.sort(key=lambda t: t[0])
    return [(k, n) for _d, k, n in found[:limit]], len(found)


def totals(ckpt: Checkpoint, nodes: list[Node] | None = None) -> dict[str, Any]:
    """Counts, elements and bytes of the tensors, by dtype and device. ``nodes``: the
    checkpoint's tensor nodes in tree order, when the caller has them."""
    if nodes is None:
        nodes = [n for n in ckpt.root.walk() if n.kind == "tensor"]
    ts: list[TensorInfo] = []
    for part in _slices(nodes):
        ts.extend(map(_TENSOR, part))
    fast = _by_dtype_fast(ts)
    sums = fast if fast is not None else _by_dtype(ts)
    by_dtype, numel, nbytes = sums
    storages = [st.source for st in map(_STORAGE, ts) if st is not None and
                st.source is not None]
    distinct = _distinct(storages)  # each storage counted once
    devices: Counter[str] = Counter()
    damaged = 0
    for part in _slices(ts):
        devices.update(map(_DEVICE, part))
        damaged += len(list(filter(None, map(_PROBLEM, part))))
    out = {
        "tensors": len(ts),
        "numel": numel,
        "nbytes": nbytes,
        "storage_nbytes": _stored_nbytes(distinct),
        "by_dtype": {k: {"tensors": v[0], "numel": v[1], "nbytes": v[2]} for k, v in
                     sorted(by_dtype.items(), key=lambda kv: -kv[1][2])},
        "devices": dict(devices),
        "damaged_tensors": damaged,
    }
    if out["damaged_tensors"]:  # damaged ones whose file is missing: shape unknown, no count
        out["unknown_shape_tensors"] = sum(1 for t in ts if t.problem and not t.shape_known)
    # as saved, as float16, the optimizer's part; from the sums by dtype where each tensor
    # is a plain one whose storage is its own and holds just its bytes (most files)
    plain = fast is not None and len(distinct) == len(ts) and not out["damaged_tensors"] \
        and out["storage_nbytes"] == nbytes
    out["memory"] = memory_totals(ckpt, nodes, ts, out["by_dtype"] if plain else None)
    return out


def _slices(seq: list[Any]) -> Iterator[list[Any]]:
    return in_slices(seq, SLICE)


def _distinct(objs: list[Any]) -> list[Any]:
    """Each object once (by identity). Past a slice, the ids are sorted by numpy, which lets
    go of the interpreter's lock while it sorts: a dict of a million ids copies itself in
    one step that holds it for a quarter of a second as it grows."""
    if len(objs) <= SLICE:
        return list({id(o): o for o in objs}.values())
    import numpy as np

    ids = np.empty(len(objs), np.uint64)
    for i, part in enumerate(_slices(objs)):
        ids[i * SLICE:i * SLICE + len(part)] = np.fromiter(map(id, part), np.uint64, len(part))
    _ids, first = np.unique(ids, return_index=True)
    return [objs[i] for i in first.tolist()]


def _stored_nbytes(sources: list[Any]) -> int:
    """The sum of the sources' ``stored_nbytes``: their ``nbytes`` summed in C where no
    source's class says otherwise (a file's own bytes, not decoded ones)."""
    kinds: set[type] = set()
    for part in _slices(sources):
        kinds.update(map(type, part))
    if all(kind.stored_nbytes is DataSource.stored_nbytes for kind in kinds):
        return sum(sum(map(_NBYTES, part)) for part in _slices(sources))
    return sum(src.stored_nbytes for src in sources)


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 tensor``, ``2 tensors``, ``1,000 tensors``."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


_TENSOR, _STORAGE = attrgetter("tensor"), attrgetter("storage")
_DTYPE, _SHAPE, _DEVICE, _PROBLEM = (attrgetter(a) for a in ("dtype", "shape", "device",
                                                              "problem"))
_LAYOUT, _NBYTES = attrgetter("layout"), attrgetter("nbytes")


def _by_dtype(ts: list[TensorInfo]) -> tuple[dict[str, list[int]], int, int]:
    """dtype -> [tensors, numel, nbytes] (in the order dtypes first appear), and the sums."""
    by_dtype: dict[str, list[int]] = {}
    numel = nbytes = 0
    for t in ts:
        if t.layout == "strided" and type(t) is TensorInfo and t.problem is None:  # inlined
            n = math.prod(t.shape)
            b = n * (_ITEMSIZE.get(t.dtype) or 0)
        else:
            n, b = t.numel, t.nbytes
        numel += n
        nbytes += b
        d = by_dtype.get(t.dtype)
        if d is None:
            by_dtype[t.dtype] = [1, n, b]
        else:
            d[0] += 1
            d[1] += n
            d[2] += b
    return by_dtype, numel, nbytes


def _by_dtype_fast(ts: list[TensorInfo]) -> tuple[dict[str, list[int]], int, int] | None:
    """:func:`_by_dtype` with no Python step per tensor, for strided tensors of a few
    dtypes whose shapes are ints (None otherwise: the sums of other numbers depend on
    their order)."""
    by_dtype: dict[str, list[int]] = {}
    for part in _slices(ts):  # partial sums of ints: the same whatever the order
        if set(map(_LAYOUT, part)) - {"strided"} or set(map(type, part)) - {TensorInfo}:
            return None
        dtype_of = list(map(_DTYPE, part))
        counts = Counter(dtype_of)
        if len(counts) > 8 or not all(type(d) is str for d in counts) or \
                UNKNOWN_DTYPE in counts:
            return None
        numels = list(map(math.prod, map(_SHAPE, part)))
        if set(map(type, numels)) - {int}:
            return None
        for dtype, count in counts.items():
            n = sum(numels) if len(counts) == 1 else \
                sum(itertools.compress(numels, map(dtype.__eq__, dtype_of)))
            sums = by_dtype.setdefault(dtype, [0, 0, 0])
            sums[0] += count
            sums[1] += n
        if len(by_dtype) > 8:
            return None
    numel = nbytes = 0
    for dtype, sums in by_dtype.items():
        sums[2] = sums[1] * (_ITEMSIZE.get(dtype) or 0)
        numel += sums[1]
        nbytes += sums[2]
    return by_dtype, numel, nbytes


def subtree_totals(root: Node) -> dict[int, tuple[int, int, int]]:
    """``id(node) -> (tensors, elements, bytes)`` below every node, in one pass."""
    out: dict[int, tuple[int, int, int]] = {}

    def tally(node: Node) -> None:
        if node.kind == "tensor" and node.tensor is not None:
            out[id(node)] = (1, node.tensor.numel, node.tensor.nbytes)
            return
        count = numel = nbytes = 0
        for child in node.children:
            c, n, b = out[id(child)]
            count += c
            numel += n
            nbytes += b
        out[id(node)] = (count, numel, nbytes)

    roll_up(root, tally)
    return out
