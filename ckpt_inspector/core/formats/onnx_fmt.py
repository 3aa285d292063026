"""ONNX models: initializers (name, dtype, shape), opsets, graph inputs and outputs.

The model is walked at the protobuf wire level on a memory map, so tensor
bytes are never read or copied; each initializer keeps the offset of its data
(inline ``raw_data`` or an external data file next to the model). ONNX holds
no Python code, so the verdict is ``safe``; external data paths that leave
the model's folder are refused.

Walking is bounded (see ``_protobuf``): at most :data:`MAX_FIELDS` fields per
model, :data:`MAX_NDIM` dimensions per tensor, and each shape's element count
is checked dimension by dimension before anything multiplies it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats import _protobuf as pb
from ckpt_inspector.core.formats._onnx_data import VarintData
from ckpt_inspector.core.io.source import Source
from ckpt_inspector.core.tensors import FileRange
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

NAME = "onnx"
MAX_FIELDS = 25_000_000  # ~10 s of walking; a large real model has a few million
MAX_NDIM = 1024
_INT64 = 1 << 63


def sniff(head: bytes) -> bool:
    """ModelProto starts with ir_version (field 1, varint) in every exporter we know."""
    if len(head) < 2 or head[0] != 0x08:
        return False
    try:
        version, pos = pb.read_varint(head, 1, len(head))
    except CheckpointError:
        return False
    return 1 <= version <= 64 and pos < len(head) and head[pos] in (0x12, 0x1A, 0x22, 0x28,
                                                                      0x32, 0x3A, 0x42, 0x72)


def read(src: Source) -> Checkpoint:
    try:
        return _read(src)
    except (TypeError, ValueError, IndexError, OverflowError) as err:
        # a field with the wrong wire type, a negative length...: not a valid model
        raise CheckpointError(f"malformed ONNX protobuf ({type(err).__name__}: {err})") \
            from None


def _read(src: Source) -> Checkpoint:
    size = len(src)
    if size == 0:
        raise CheckpointError("empty file")
    buf = src.data
    # initializers (and external data files beside the model) are read from the file
    path = src.path or src.name
    root = Node("dict", None, "onnx.ModelProto")
    ckpt = Checkpoint(path, "onnx", root, file_size=size)
    meta: dict[str, Any] = {}
    opsets: dict[str, int] = {}
    props: dict[str, str] = {}
    graph_span = None
    budget = pb.Budget(MAX_FIELDS)
    for number, _wire, value in pb.fields(buf, 0, size, budget):
        if number == 7:
            graph_span = value
        elif number == 8:
            domain, version = _opset(buf, value, budget)
            opsets[domain or "ai.onnx"] = version
        elif number == 14:
            k, v = _string_pair(buf, value, budget)
            props[k] = v
        elif number in _MODEL_NUMBERS:
            meta[_MODEL_NUMBERS[number]] = value
        elif number in _MODEL_TEXTS:
            meta[_MODEL_TEXTS[number]] = pb.text(buf, value)[:_TEXT_CAPS.get(number)]
    if "ir_version" not in meta:
        raise CheckpointError("not an ONNX model (no ir_version)")
    if graph_span is None:
        raise CheckpointError("ONNX model without a graph")
    meta["opset_import"] = opsets
    if props:
        meta["metadata_props"] = props
    _graph(buf, graph_span, path, root, meta, budget)
    ckpt.metadata.update(meta)
    return ckpt


# ModelProto's scalar fields, by number
_MODEL_NUMBERS = {1: "ir_version", 5: "model_version"}
_MODEL_TEXTS = {2: "producer", 3: "producer_version", 4: "domain", 6: "doc_string"}
_TEXT_CAPS = {6: 2000}


def _opset(buf: Any, span: tuple[int, int], budget: pb.Budget) -> tuple[str, int]:
    domain, version = "", 0
    for n, _w, v in pb.fields(buf, *span, budget):
        if n == 1:
            domain = pb.text(buf, v)
        elif n == 2:
            version = pb.signed64(v)
    return domain, version


def _string_pair(buf: Any, span: tuple[int, int], budget: pb.Budget) -> tuple[str, str]:
    key = value = ""
    for n, _w, v in pb.fields(buf, *span, budget):
        if n == 1:
            key = pb.text(buf, v)
        elif n == 2:
            value = pb.text(buf, v)
    return key, value


def _graph(buf: Any, span: tuple[int, int], path: str, root: Node, meta: dict[str, Any],
           budget: pb.Budget) -> None:
    ops: Counter[str] = Counter()
    inputs, outputs = [], []
    for number, _wire, value in pb.fields(buf, *span, budget):
        if number == 1:  # NodeProto
            op, domain = "", ""
            for n2, _w2, v2 in pb.fields(buf, *value, budget):
                if n2 == 4:
                    op = pb.text(buf, v2)
                elif n2 == 7:
                    domain = pb.text(buf, v2)
            ops[f"{domain}::{op}" if domain and domain != "ai.onnx" else op] += 1
        elif number == 2:
            meta["graph"] = pb.text(buf, value)
        elif number == 5:  # initializer
            name, info = _tensor(buf, value, path, budget)
            root.add(Node("tensor", name, "onnx.TensorProto", tensor=info))
        elif number == 11:
            inputs.append(_value_info(buf, value, budget))
        elif number == 12:
            outputs.append(_value_info(buf, value, budget))
    initializer_names = {c.key for c in root.children}
    meta["inputs"] = [i for i in inputs if i["name"] not in initializer_names]
    meta["outputs"] = outputs
    meta["nodes"] = sum(ops.values())
    meta["operators"] = dict(ops.most_common())


def _value_info(buf: Any, span: tuple[int, int], budget: pb.Budget) -> dict[str, Any]:
    info: dict[str, Any] = {"name": "", "dtype": None, "shape": None}
    for n, _w, v in pb.fields(buf, *span, budget):
        if n == 1:
            info["name"] = pb.text(buf, v)
        elif n == 2:  # TypeProto
            for n2, _w2, v2 in pb.fields(buf, *v, budget):
                if n2 != 1:  # only tensor types are described
                    info["dtype"] = "non-tensor"
                    continue
                _tensor_type(buf, v2, info, budget)
    return info


def _tensor_type(buf: Any, span: tuple[int, int], info: dict[str, Any],
                 budget: pb.Budget) -> None:
    for n, _w, v in pb.fields(buf, *span, budget):
        if n == 1:
            info["dtype"] = dtypes.ONNX_NAMES.get(v, f"onnx:{v}")
        elif n == 2:
            info["shape"] = _shape_dims(buf, v, budget)


def _shape_dims(buf: Any, span: tuple[int, int], budget: pb.Budget) -> list[Any]:
    """A TensorShapeProto's dimensions: numbers, symbolic names or None."""
    dims: list[Any] = []
    for n, _w, v in pb.fields(buf, *span, budget):
        if n != 1:
            continue
        if len(dims) == MAX_NDIM:
            dims.append("…")
        if len(dims) > MAX_NDIM:
            continue  # walked (within the budget), not kept
        dim: Any = None
        for n2, _w2, v2 in pb.fields(buf, *v, budget):
            if n2 == 1:
                dim = pb.signed64(v2)
            elif n2 == 2:
                dim = pb.text(buf, v2)
        dims.append(dim)
    return dims


@dataclass
class _TensorFields:
    """What a TensorProto says, field by field (``typed``: the typed data fields)."""

    name: str = ""
    dims: list[int] = field(default_factory=list)
    ndim: int = 0  # dimensions in the file, beyond the MAX_NDIM kept
    code: int = 0
    raw: Any = None
    typed: dict[int, tuple[int, int]] = field(default_factory=dict)
    external: dict[str, str] = field(default_factory=dict)
    location: int = 0


def _tensor_fields(buf: Any, span: tuple[int, int], budget: pb.Budget) -> _TensorFields:
    f = _TensorFields()
    for n, wire, v in pb.fields(buf, *span, budget):
        if n == 1:
            f.ndim = _add_dims(buf, wire, v, f.dims, f.ndim)
        elif n == 2:
            f.code = v
        elif n == 8:
            f.name = pb.text(buf, v)
        elif n == 9:
            f.raw = v
        elif n in (4, 5, 7, 10, 11) and wire == pb.LEN:
            f.typed[n] = v
        elif n == 13:
            k, val = _string_pair(buf, v, budget)
            f.external[k] = val
        elif n == 14:
            f.location = v
    return f


def _tensor(buf: Any, span: tuple[int, int], path: str,
            budget: pb.Budget) -> tuple[str, TensorInfo]:
    f = _tensor_fields(buf, span, budget)
    name, dims, ndim, code, raw, typed, external, location = (
        f.name, f.dims, f.ndim, f.code, f.raw, f.typed, f.external, f.location)
    dtype = dtypes.ONNX_CODES.get(code)
    numel = _numel(dims, ndim)
    # a shape whose product is not an element count is not kept: whatever shows or sums
    # it would multiply it again
    info = TensorInfo(dtype or dtypes.ONNX_NAMES.get(code, f"onnx:{code}"),
                      tuple(dims) if isinstance(numel, int) else (), None, device="cpu")
    if isinstance(numel, str):
        info.problem = numel
        return name, info
    if dtype is None:
        info.problem = f"ONNX data type {info.dtype} has no torch equivalent"
        return name, info
    if code in dtypes.ONNX_PACKED_4BIT:
        info.problem = "packed 4-bit data: shown, not decoded"
        return name, info
    item = dtypes.itemsize(dtype) or 1
    source: Any = None
    if location == 1 or external:
        source, problem = _external(path, external, numel * item)
        info.problem = problem
    elif raw is not None:
        source = FileRange(path, raw[0], raw[1] - raw[0])
    elif typed:
        source = _typed_data(path, typed, dtype, item, info)
    elif numel:
        info.problem = "initializer has no data"
    if source is not None and not isinstance(source, VarintData) and info.problem is None \
            and source.nbytes != numel * item:
        info.problem = f"data holds {source.nbytes:,} bytes, {numel * item:,} expected"
    info.storage = StorageInfo(name, dtype, numel, "cpu", source, info.problem)
    return name, info


def _add_dims(buf: Any, wire: int, v: Any, dims: list[int], ndim: int) -> int:
    """TensorProto.dims (packed or one by one) added to ``dims`` (at most MAX_NDIM kept);
    the number of dimensions the file gives so far."""
    if wire == pb.LEN:  # packed: decoded only when there are few enough
        left = MAX_NDIM - ndim  # a varint takes 1 to 10 bytes
        packed = pb.decode_packed_varints(bytes(buf[v[0]:v[1]]), left) \
            if 0 <= v[1] - v[0] <= 10 * left else None
        if packed is None:
            return MAX_NDIM + 1
        dims.extend(pb.signed64(x) for x in packed)
        return ndim + len(packed)
    ndim += 1
    if ndim <= MAX_NDIM:
        dims.append(pb.signed64(v))
    return ndim


def _typed_data(path: str, typed: dict[int, tuple[int, int]], dtype: str, item: int,
                info: TensorInfo) -> Any:
    """The data of an initializer held in a typed field rather than raw_data."""
    if 4 in typed or 10 in typed:  # float_data / double_data: packed little-endian
        s = typed.get(4) or typed[10]
        if dtype not in ("float32", "float64", "complex64", "complex128"):
            info.problem = "unexpected float_data layout"
        return FileRange(path, s[0], s[1] - s[0])
    field_no, s = next(iter(typed.items()))
    return VarintData(path, s[0], s[1] - s[0], item,
                      signed=field_no in (5, 7) and dtype.startswith("int"))


def _numel(dims: list[int], ndim: int) -> int | str:
    """The element count, or why there is none: each dimension is checked before it is
    multiplied, so no product grows past int64 (a shape of a million huge dimensions
    would otherwise take minutes)."""
    if ndim > MAX_NDIM:
        return f"more than {MAX_NDIM:,} dimensions: not read"
    numel = 1
    for d in dims:
        if d < 0:
            return f"negative dimension in shape {_short(dims)}"
        numel *= d
        if numel >= _INT64:
            return f"the element count of shape {_short(dims)} overflows int64"
    return numel


def _short(dims: list[int]) -> str:
    shown = ", ".join(str(d) for d in dims[:6])
    return f"({shown}{', …' if len(dims) > 6 else ''}; {len(dims)} dimensions)"


def _external(path: str, entry: dict[str, str], nbytes: int) -> tuple[Any, str | None]:
    folder = os.path.dirname(os.path.abspath(path))
    location = entry.get("location", "")
    target = os.path.realpath(os.path.join(folder, location))
    if not location or os.path.isabs(location) or os.path.commonpath(
            [os.path.realpath(folder), target]) != os.path.realpath(folder):
        return None, f"external data path {location!r} leaves the model's folder: refused"
    if not os.path.isfile(target):
        return None, f"external data file {location!r} not found"
    try:
        offset = int(entry.get("offset", 0))
        length = int(entry["length"]) if "length" in entry else os.path.getsize(target) - offset
    except ValueError:
        return None, "malformed external data offset or length"
    if offset < 0 or length < 0 or offset + length > os.path.getsize(target):
        return None, f"external data lies outside {location!r}"
    return FileRange(target, offset, length), None
