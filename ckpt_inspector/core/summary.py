"""Totals and plain-data descriptions of a checkpoint, shared by the CLI's JSON and the GUI."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii as _js
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.keytree import roll_up
from ckpt_inspector.core.tree import Checkpoint, Node, TensorInfo, key_of

MAX_VALUES = 1000


def human_bytes(n: float) -> str:
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


def jsonable(value: Any, limit: int = 100) -> Any:
    """A JSON-safe version of a value (NaN, complex and huge ints become strings)."""
    if value is None or isinstance(value, (bool, str)):
        return value
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
    return str(value)


def format_value(node: Node, limit: int = 100) -> str:
    """A leaf's value as people read it: ``7``, ``'adam'``, ``(0.9, 0.999)``, ``None``."""
    if node.kind == "none":
        return "None"
    if node.kind == "str":
        text = repr(node.value)
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
    return [(p, n) for p, n in walk_paths(ckpt.root) if n.kind == "tensor"]


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
        "numel": t.numel,
        "nbytes": t.nbytes,
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
_INT_LIST = str.maketrans("", "", "0123456789[], -")  # what a list of ints prints as


def _int_list(values: Any) -> str | None:
    """``values`` as JSON when they are plain ints (``str`` of such a list is its JSON)."""
    if type(values) is not tuple:
        return None
    text = str(list(values))
    return None if text.translate(_INT_LIST) else text


def tensor_json(path: list[Any], node: Node, shared: dict[int, list[str]]) -> str:
    """``json.dumps(tensor_record(path, node, shared))``, written directly for the common
    tensor (a plain strided tensor, its storage its own, keys and names strings): a
    checkpoint holds up to hundreds of thousands, and the dict plus the encoder take ~10 µs
    each. Anything else goes through :func:`tensor_record`."""
    t = node.tensor
    st = t.storage if t is not None else None
    if st is None or st.source is None or t.layout != "strided" or t.quantization or \
            t.subclass or t.pieces is not None or (shared and id(st.source) in shared):
        return json.dumps(tensor_record(path, node, shared))
    shape = _int_list(t.shape)
    stride = "null" if t.stride is None else _int_list(t.stride)
    offset, grad, role = t.storage_offset, t.requires_grad, node.role
    if shape is None or stride is None or type(offset) is not int or \
            type(st.numel) is not int or type(grad) is not bool or \
            not ((len(path) == 1 and type(path[0]) is str) or all(type(k) is str for k in path)):
        return json.dumps(tensor_record(path, node, shared))
    try:
        key = _js(".".join(path))
        one = len(path) == 1
        keys = key if one else ", ".join(map(_js, path))
        store = key if one and type(st.key) is str and st.key == path[0] else _js(st.key)
        numel = math.prod(t.shape)
        size = _ITEMSIZE.get(t.dtype)
        text = (f'{{"key": {key}, "path": [{keys}], '
                f'"dtype": {_js(t.dtype)}, "shape": {shape}, "numel": {numel}, '
                f'"nbytes": {numel * (size or 0)}, "device": {_js(t.device)}, '
                f'"stride": {stride}, "storage_offset": {offset}, '
                f'"requires_grad": {"true" if grad else "false"}, '
                f'"role": {"null" if role is None else _js(role)}, '
                f'"in_state_dict": {"false" if role in _NOT_SAVED else "true"}, '
                f'"storage": {{"key": {store}, "dtype": {_js(st.dtype)}, '
                f'"nbytes": {st.numel * (_ITEMSIZE.get(st.dtype) or 1)}, '
                f'"location": {_js(st.location)}}}')
        if t.problem:
            text += f', "problem": {_js(t.problem)}'
        if t.file is not None:
            text += f', "file": {_js(t.file)}'
    except TypeError:  # a name that is not a string
        return json.dumps(tensor_record(path, node, shared))
    return text + "}"


def value_records(ckpt: Checkpoint, limit: int = MAX_VALUES) -> list[dict[str, Any]]:
    """Non-tensor leaves (epoch, loss, hyper-parameters, ...) with their paths."""
    out = []
    for node in ckpt.root.walk():
        if node.kind in ("scalar", "str", "none", "value", "bytes") or (
                node.kind in ("list", "tuple", "set") and node.value is not None):
            if node.parent is None:
                continue
            path = node.path()
            out.append({"key": key_of(path), "path": [jsonable(k) for k in path],
                        "type": node.type_name, "value": jsonable(node.value)})
            if len(out) >= limit:
                break
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


def totals(ckpt: Checkpoint) -> dict[str, Any]:
    by_dtype: dict[str, dict[str, int]] = {}
    devices: Counter[str] = Counter()
    count = numel = nbytes = 0
    storages: dict[Any, int] = {}
    damaged = 0
    for node in ckpt.root.walk():
        if node.kind != "tensor":
            continue
        t = node.tensor
        count += 1
        if t.layout == "strided":  # TensorInfo.numel and .nbytes, without the calls
            n = math.prod(t.shape)
            b = n * (dtypes.itemsize(t.dtype) or 0)
        else:
            n, b = t.numel, t.nbytes
        numel += n
        nbytes += b
        d = by_dtype.get(t.dtype)
        if d is None:
            d = by_dtype[t.dtype] = {"tensors": 0, "numel": 0, "nbytes": 0}
        d["tensors"] += 1
        d["numel"] += n
        d["nbytes"] += b
        devices[t.device] += 1
        st = t.storage
        if st is not None and st.source is not None:
            storages[id(st.source)] = st.source.stored_nbytes
        if t.problem:
            damaged += 1
    return {
        "tensors": count,
        "numel": numel,
        "nbytes": nbytes,
        "storage_nbytes": sum(storages.values()),
        "by_dtype": dict(sorted(by_dtype.items(), key=lambda kv: -kv[1]["nbytes"])),
        "devices": dict(devices),
        "damaged_tensors": damaged,
    }


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
