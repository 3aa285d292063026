"""Totals and plain-data descriptions of a checkpoint, shared by the CLI's JSON and the GUI."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

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


def shared_storage(ckpt: Checkpoint) -> dict[int, list[str]]:
    """Tensor keys by storage, for storages used by more than one tensor."""
    users: dict[Any, list[str]] = defaultdict(list)
    for path, node in ckpt.tensors():
        ident = storage_identity(node.tensor)
        if ident is not None:
            users[ident].append(key_of(path))
    return {k: v for k, v in users.items() if len(v) > 1}


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
            if child.kind in ("module",) or child.role == "attribute":
                continue
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
    for _path, node in ckpt.tensors():
        t = node.tensor
        count += 1
        numel += t.numel
        nbytes += t.nbytes
        d = by_dtype.setdefault(t.dtype, {"tensors": 0, "numel": 0, "nbytes": 0})
        d["tensors"] += 1
        d["numel"] += t.numel
        d["nbytes"] += t.nbytes
        devices[t.device] += 1
        ident = storage_identity(t)
        if ident is not None:
            storages[ident] = t.storage.source.stored_nbytes
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
