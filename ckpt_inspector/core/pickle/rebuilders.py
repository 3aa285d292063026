"""What the functions a pickle calls rebuild, one small handler per function.

Two tables, keyed by the fully-qualified name the stream imports (as Netron's
``python.js`` registers ``torch._utils._rebuild_tensor_v2`` and the rest):

- :data:`TENSORS`: torch's rebuild functions, each turning its call into a
  :class:`TensorInfo` (or None when the arguments describe none);
- :data:`VALUES`: everything else the tree shows as something better than an
  object (dicts, sets, bytes, ``torch.device``, numpy scalars and arrays...),
  each returning a :class:`Node`, or None to show the call as a plain object.

A handler gets the :class:`TreeBuilder` that asks, so that it can convert the
values it holds; it never runs anything.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable
from typing import Any, Protocol

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.pickle.arguments import (
    device_str,
    dtype_name,
    last_wins,
    literal_bytes,
    shape_of,
    state_dict_of,
    type_name_of,
)
from ckpt_inspector.core.pickle.values import Call, GlobalRef, LazyBytes
from ckpt_inspector.core.tensors import BytesRange
from ckpt_inspector.core.tree import Node, StorageInfo, TensorInfo


class TreeBuilder(Protocol):
    """What a handler may ask of the builder (:class:`~.rebuild.TreeBuilder`)."""

    def convert(self, value: Any, key: Any, depth: int, ancestors: set[int]) -> Node: ...

    def mapping(self, node: Node, items: Any, depth: int, ancestors: set[int]) -> Node: ...

    def sequence(self, node: Node, items: Any, depth: int, ancestors: set[int]) -> Node: ...

    def tensor_info(self, call: Any, depth: int = 0) -> TensorInfo | None: ...

    def strided(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None,
                requires_grad: bool) -> TensorInfo: ...

    def nested_value(self, call: Call) -> Any: ...


ValueHandler = Callable[[TreeBuilder, Call, Any, int, "set[int]"], "Node | None"]
TensorHandler = Callable[[TreeBuilder, Call, int], "TensorInfo | None"]

VALUES: dict[str, ValueHandler] = {}
TENSORS: dict[str, TensorHandler] = {}

# torch defines its rebuild functions in these two modules and imports them into each
# other: a function is known by its own name within either
_TORCH_REBUILD_MODULES = ("torch._utils.", "torch._tensor.")
# numpy 1 and 2 spell the module of scalar/_reconstruct differently
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_LAYOUTS = {"torch.strided": "strided", "torch.sparse_coo": "sparse_coo",
            "torch.sparse_csr": "sparse_csr", "torch.sparse_csc": "sparse_csc",
            "torch.sparse_bsr": "sparse_bsr", "torch.sparse_bsc": "sparse_bsc",
            "torch.jagged": "jagged"}
_NUMPY_CODES = {"f8": "float64", "f4": "float32", "f2": "float16", "i8": "int64", "i4": "int32",
                "i2": "int16", "i1": "int8", "u8": "uint64", "u4": "uint32", "u2": "uint16",
                "u1": "uint8", "b1": "bool", "c16": "complex128", "c8": "complex64"}
_STRUCT_CODES = {"f8": "d", "f4": "f", "f2": "e", "i8": "q", "i4": "i", "i2": "h", "i1": "b",
                 "u8": "Q", "u4": "I", "u2": "H", "u1": "B", "b1": "?"}


def value_rebuilder(name: str) -> ValueHandler | None:
    """The handler for a call of ``name`` (numpy's multiarray functions also under a
    submodule of it), or None: the call is shown as an object."""
    handler = VALUES.get(name)
    if handler is None and name.startswith(_NUMPY_MODULES):  # and their submodules
        handler = VALUES.get(_NUMPY_MODULES[0] + name[name.rfind("."):])
    return handler


def tensor_rebuilder(name: str) -> TensorHandler | None:
    """The handler for a torch rebuild function named ``name``, or None."""
    if not name.startswith(_TORCH_REBUILD_MODULES):
        return None
    return _TENSORS_BY_NAME.get(name[name.rfind(".") + 1:])


def _values(*names: str) -> Callable[[ValueHandler], ValueHandler]:
    def register(handler: ValueHandler) -> ValueHandler:
        VALUES.update(dict.fromkeys(names, handler))
        return handler
    return register


def _tensors(*names: str) -> Callable[[TensorHandler], TensorHandler]:
    def register(handler: TensorHandler) -> TensorHandler:
        TENSORS.update(dict.fromkeys(names, handler))
        return handler
    return register


# -- torch tensors ------------------------------------------------------------------------
@_tensors("torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2")
def _rebuild_tensor(b: TreeBuilder, call: Call, depth: int) -> TensorInfo | None:
    a = call.args
    return b.strided(a[0], a[1], a[2], a[3], None,
                     requires_grad=bool(a[4]) if len(a) > 4 else False)


@_tensors("torch._utils._rebuild_tensor_v3")
def _rebuild_tensor_v3(b: TreeBuilder, call: Call, depth: int) -> TensorInfo | None:
    a = call.args
    return b.strided(a[0], a[1], a[2], a[3], dtype_name(a[6]),
                     requires_grad=bool(a[4]) if len(a) > 4 else False)


@_tensors("torch._utils._rebuild_qtensor")
def _rebuild_qtensor(b: TreeBuilder, call: Call, depth: int) -> TensorInfo | None:
    a = call.args
    info = b.strided(a[0], a[1], a[2], a[3], None,
                     requires_grad=bool(a[5]) if len(a) > 5 else False)
    params = a[4]
    scheme = params[0].name if isinstance(params[0], GlobalRef) else str(params[0])
    q: dict[str, Any] = {"scheme": scheme}
    if scheme.startswith("per_tensor"):
        q["scale"], q["zero_point"] = float(params[1]), int(params[2])
    else:
        q["axis"] = int(params[3])
        comps = {}
        for label, v in (("scales", params[1]), ("zero_points", params[2])):
            t = b.tensor_info(v, depth + 1)
            if t is not None:
                comps[label] = t
        info.components = comps
    info.quantization = q
    return info


@_tensors("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state")
def _rebuild_parameter(b: TreeBuilder, call: Call, depth: int) -> TensorInfo | None:
    a = call.args
    inner = b.tensor_info(a[0], depth + 1)
    if inner is None:
        return None
    info = dataclasses.replace(inner)
    info.is_parameter = True
    info.requires_grad = bool(a[1])
    return info


@_tensors("torch._tensor._rebuild_from_type", "torch._tensor._rebuild_from_type_v2")
def _rebuild_from_type(b: TreeBuilder, call: Call, depth: int) -> TensorInfo | None:
    func, new_type, args = call.args[0], call.args[1], call.args[2]
    inner = b.tensor_info(Call(func, tuple(args), "reduce", call.offset), depth + 1)
    if inner is None:
        return None
    info = dataclasses.replace(inner)
    sub = type_name_of(new_type)
    if sub == "torch.nn.parameter.Parameter":
        info.is_parameter = True
    elif sub not in ("torch.Tensor", "torch._tensor.Tensor"):
        info.subclass = sub
    return info


@_tensors("torch._utils._rebuild_meta_tensor_no_storage")
def _rebuild_meta_tensor(b: TreeBuilder, call: Call, depth: int) -> TensorInfo | None:
    a = call.args
    return TensorInfo(dtype_name(a[0]) or "unknown", shape_of(a[1]), shape_of(a[2]),
                      device="meta", requires_grad=bool(a[3]),
                      problem="meta tensor: the file holds no data for it")


@_tensors("torch._utils._rebuild_wrapper_subclass")
def _rebuild_wrapper_subclass(b: TreeBuilder, call: Call, depth: int) -> TensorInfo | None:
    a = call.args
    device = device_str(a[6]) or "unknown"
    return TensorInfo(dtype_name(a[1]) or "unknown", shape_of(a[2]), shape_of(a[3]),
                      int(a[4]), device=device, subclass=type_name_of(a[0]),
                      problem="tensor subclass: its data is not stored in the file")


@_tensors("torch._utils._rebuild_device_tensor_from_numpy",
          "torch._utils._rebuild_device_tensor_from_cpu_tensor")
def _rebuild_device_tensor(b: TreeBuilder, call: Call, depth: int) -> TensorInfo | None:
    a = call.args
    inner = b.tensor_info(a[0], depth + 1)
    if inner is None and isinstance(a[0], Call):
        nd = _ndarray(b, a[0], None, depth, set())
        inner = nd.tensor if nd is not None else None
    if inner is None:
        return None
    info = dataclasses.replace(inner)
    info.device = device_str(a[2]) or info.device
    info.requires_grad = bool(a[3])
    return info


@_tensors("torch._utils._rebuild_sparse_tensor")
def _rebuild_sparse_tensor(b: TreeBuilder, call: Call, depth: int) -> TensorInfo | None:
    layout_v, data = call.args[0], call.args[1]
    layout = str(layout_v.args[0]) if isinstance(layout_v, Call) and layout_v.args \
        else type_name_of(layout_v)
    layout = _LAYOUTS.get(layout, layout)
    labels = (["indices", "values"] if layout == "sparse_coo"
              else ["compressed_indices", "plain_indices", "values"])
    tensors = [b.tensor_info(x, depth + 1) for x in data]
    comps = dict(zip(labels, [t for t in tensors if t is not None]))
    size: tuple[int, ...] = ()
    for x in data:
        if isinstance(x, (tuple, list)) and all(isinstance(i, int) for i in x):
            size = tuple(x)
        elif isinstance(x, Call) and x.func_name == "torch.Size" and x.args:
            size = shape_of(x.args[0])
    values = comps.get("values")
    return TensorInfo(values.dtype if values else "unknown", size, None,
                      device=values.device if values else "cpu", layout=layout,
                      components=comps)


@_tensors("torch._utils._rebuild_nested_tensor")
def _rebuild_nested_tensor(b: TreeBuilder, call: Call, depth: int) -> TensorInfo | None:
    buf = b.tensor_info(call.args[0], depth + 1)
    if buf is None:
        return None
    return TensorInfo(buf.dtype, (), None, device=buf.device, layout="nested",
                      components={"buffer": buf})


_TENSORS_BY_NAME = {name[name.rfind(".") + 1:]: handler for name, handler in TENSORS.items()}


# -- containers, scalars and small torch values -------------------------------------------
@_values("collections.OrderedDict", "collections.defaultdict", "builtins.dict",
         "collections.Counter")
def _dict(b: TreeBuilder, call: Call, key: Any, depth: int, ancestors: set[int]) -> Node | None:
    name, args = call.func_name or "", call.args
    node = Node("dict", key, name)
    items: list[tuple[Any, Any]] = []
    if name in ("collections.Counter", "builtins.dict") and args and isinstance(args[0], dict):
        items.extend(args[0].items())
    items.extend(call.dict_items or [])
    items = last_wins(items)
    if name == "collections.defaultdict" and args:
        node.note = f"default: {type_name_of(args[0])}"
    state = state_dict_of(call)
    if state and "_metadata" in state:
        node.note = "state_dict with _metadata"
        node.versions = _versions(state["_metadata"])
    return b.mapping(node, items, depth, ancestors)


def _versions(metadata: Any) -> dict[str, int]:
    """``{module prefix: version}`` of a state_dict's ``_metadata`` (an OrderedDict of
    ``{"version": n}``); what is not that shape is left out."""
    if isinstance(metadata, Call):
        items = list(metadata.dict_items or [])
    else:
        items = list(metadata.items()) if isinstance(metadata, dict) else []
    out = {}
    for prefix, entry in items:
        if isinstance(prefix, str) and isinstance(entry, dict):
            version = entry.get("version")
            if isinstance(version, int) and not isinstance(version, bool):
                out[prefix] = version
    return out


@_values("builtins.set", "builtins.frozenset")
def _set(b: TreeBuilder, call: Call, key: Any, depth: int, ancestors: set[int]) -> Node | None:
    args = call.args
    if len(args) > 1:
        return None
    items = list(args[0]) if args and isinstance(args[0], (list, tuple, set)) else []
    items.extend(call.list_items or [])
    return b.sequence(Node("set", key, (call.func_name or "").split(".")[1]), items, depth,
                      ancestors)


@_values("_codecs.encode", "builtins.bytearray", "builtins.bytes")
def _bytes(b: TreeBuilder, call: Call, key: Any, depth: int, ancestors: set[int]) -> Node | None:
    name, args = call.func_name or "", call.args
    raw = literal_bytes(call) if name == "_codecs.encode" else (
        literal_bytes(args[0]) if args else b"")
    if raw is None:
        return None
    return Node("bytes", key, name.split(".")[1], raw, note=f"{len(raw):,} bytes")


@_values("builtins.complex")
def _complex(b: TreeBuilder, call: Call, key: Any, depth: int,
             ancestors: set[int]) -> Node | None:
    args = call.args
    if len(args) == 2 and all(isinstance(a, (int, float)) for a in args):
        return Node("scalar", key, "complex", complex(args[0], args[1]))
    return None


@_values("torch.device")
def _device(b: TreeBuilder, call: Call, key: Any, depth: int, ancestors: set[int]) -> Node | None:
    return Node("value", key, "torch.device", device_str(call))


@_values("torch.Size")
def _size(b: TreeBuilder, call: Call, key: Any, depth: int, ancestors: set[int]) -> Node | None:
    if call.args and isinstance(call.args[0], tuple):
        return Node("value", key, "torch.Size", f"torch.Size({list(call.args[0])})")
    return None


@_values("torch.serialization._get_layout")
def _layout(b: TreeBuilder, call: Call, key: Any, depth: int, ancestors: set[int]) -> Node | None:
    if call.args:
        return Node("value", key, "torch.layout", str(call.args[0]))
    return None


@_values("torch.storage._load_from_bytes")
def _load_from_bytes(b: TreeBuilder, call: Call, key: Any, depth: int,
                     ancestors: set[int]) -> Node | None:
    """A checkpoint embedded as bytes: its value, where the reader read it."""
    if not call.args:
        return None
    nested = b.nested_value(call)
    return None if nested is None else b.convert(nested, key, depth + 1, ancestors)


# -- numpy -------------------------------------------------------------------------------
@_values("numpy.dtype")
def _numpy_dtype_value(b: TreeBuilder, call: Call, key: Any, depth: int,
                       ancestors: set[int]) -> Node | None:
    if call.args:
        return Node("value", key, "numpy.dtype", f"dtype({call.args[0]!r})")
    return None


@_values("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
def _numpy_scalar_value(b: TreeBuilder, call: Call, key: Any, depth: int,
                        ancestors: set[int]) -> Node | None:
    scalar = _numpy_scalar(call)
    return None if scalar is None else Node("scalar", key, scalar[0], scalar[1])


@_values("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
def _ndarray(b: TreeBuilder, call: Call, key: Any, depth: int,
             ancestors: set[int]) -> Node | None:
    """``numpy.core.multiarray._reconstruct`` + BUILD state: an array in the stream."""
    state = call.state
    if not (isinstance(state, tuple) and len(state) == 5):
        return None
    _version, shape, dtype_call, fortran, raw = state
    return _array_node(key, raw, dtype_call, shape, bool(fortran))


@_values("numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer")
def _frombuffer(b: TreeBuilder, call: Call, key: Any, depth: int,
                ancestors: set[int]) -> Node | None:
    """``numpy.core.numeric._frombuffer(buffer, dtype, shape, order)``: protocol 5 arrays."""
    if len(call.args) != 4:
        return None
    raw, dtype_call, shape, order = call.args
    return _array_node(key, raw, dtype_call, shape, order == "F")


@_values("joblib.numpy_pickle.NumpyArrayWrapper.read")
def _joblib_array(b: TreeBuilder, call: Call, key: Any, depth: int,
                  ancestors: set[int]) -> Node | None:
    """An array joblib.load reads from the bytes after its wrapper (``formats._joblib``):
    ``(bytes, dtype, shape, order)``. Its data lies in the file like a tensor's."""
    if len(call.args) != 4:
        return None
    raw, dtype_call, shape, order = call.args
    node = _array_node(key, raw, dtype_call, shape, order == "F")
    if node.tensor is not None:
        node.kind = "tensor"
    return node


def _array_node(key: Any, raw: Any, dtype_call: Any, shape: Any, fortran: bool) -> Node:
    code, order = _numpy_dtype(dtype_call)
    shape_t = shape_of(shape)
    torch_name = _NUMPY_CODES.get(code or "")
    node = Node("ndarray", key, "numpy.ndarray")
    node.note = f"numpy {code or '?'} array"
    data = literal_bytes(raw)
    if torch_name is None or data is None:
        node.value = f"array{list(shape_t)} of {code or 'objects'}"
        return node
    item = dtypes.itemsize(torch_name) or 1
    if isinstance(data, LazyBytes):
        source = BytesRange(data.data, data.offset, data.length, order)
    else:
        source = BytesRange(bytes(data), 0, len(data), order)
    st = StorageInfo("ndarray", torch_name, len(data) // item, "cpu", source)
    n = math.prod(shape_t)
    stride: tuple[int, ...] | None = None
    if fortran and len(shape_t) > 1:
        acc, strides = 1, []
        for s in shape_t:
            strides.append(acc)
            acc *= s
        stride = tuple(strides)
    info = TensorInfo(torch_name, shape_t, stride, 0, st, device="numpy")
    if n > st.numel:
        info.problem = "array data is shorter than its shape"
    node.tensor = info
    return node


def _numpy_dtype(value: Any) -> tuple[str | None, str]:
    """(code like 'f4', byte order 'little'|'big') of a pickled ``numpy.dtype``."""
    if not (isinstance(value, Call) and value.func_name == "numpy.dtype" and value.args):
        return None, "little"
    code = value.args[0] if isinstance(value.args[0], str) else None
    order = "little"
    state = value.state
    if isinstance(state, tuple) and len(state) > 1 and state[1] == ">":
        order = "big"
    return code, order


def _numpy_scalar(call: Call) -> tuple[str, Any] | None:
    if len(call.args) != 2:
        return None
    code, order = _numpy_dtype(call.args[0])
    raw = literal_bytes(call.args[1])
    if code is None or raw is None or isinstance(raw, LazyBytes):
        return None
    name = f"numpy.{_NUMPY_CODES.get(code, code)}"
    prefix = ">" if order == "big" else "<"
    try:
        if code in ("c8", "c16"):
            fmt = prefix + ("ff" if code == "c8" else "dd")
            re, im = struct.unpack(fmt, bytes(raw))
            return name, complex(re, im)
        fmt = _STRUCT_CODES.get(code)
        if fmt is None:
            return None
        value = struct.unpack(prefix + fmt, bytes(raw))[0]
        return name, value
    except struct.error:
        return None
