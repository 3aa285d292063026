"""Turn the inert values of :mod:`pickle_vm` into the node tree.

This is where the reader understands what torch pickles mean without running
them: ``torch._utils._rebuild_tensor_v2(storage, ...)`` becomes a tensor node,
``collections.OrderedDict()`` plus ``SETITEMS`` a dict, an object whose state
has ``_modules`` and ``_parameters`` an ``nn.Module`` whose tensors are keyed
like its ``state_dict()``, ``numpy.core.multiarray.scalar`` a number, and so
on. Anything it does not recognise stays visible as an object with its
arguments and state.

The conversion recurses, so it is bounded: nesting deeper than
``max_depth`` and trees larger than ``max_nodes`` (a file can describe an
exponentially large tree with shared references) are cut off with a warning.
Cycles become ``cycle`` nodes.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.pickle.vm import (
    Builds,
    Call,
    ExtensionRef,
    GlobalRef,
    LazyBytes,
    PersistentRef,
    SafeKey,
    safe_key,
)
from ckpt_inspector.core.tensors import BytesRange, extent
from ckpt_inspector.core.tree import Node, StorageInfo, TensorInfo

SCALAR_TYPES = (bool, int, float, complex)
ABSURD_NUMEL = 1 << 48
MAX_NDIM = 1024
_INT64 = 1 << 63

_TORCH_UTILS = "torch._utils."
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


def type_name_of(value: Any) -> str:
    if isinstance(value, GlobalRef):
        return value.full_name
    if isinstance(value, Call):
        return value.func_name or "<computed>"
    return type(value).__name__


# the names codecs.lookup accepts for the encodings a stream may spell bytes with
_CODEC_ALIASES = {
    "latin-1": {"latin1", "latin_1", "latin", "l1", "iso8859", "iso8859_1", "iso_8859_1",
                "iso_8859_1_1987", "iso_ir_100", "8859", "cp819", "ibm819", "csisolatin1"},
    "utf-8": {"utf8", "utf_8", "u8", "utf", "utf8_ucs2", "utf8_ucs4", "cp65001"},
    "ascii": {"ascii", "646", "us_ascii", "us", "ansi_x3.4_1968", "ansi_x3_4_1968", "cp367",
              "csascii", "ibm367", "iso646_us", "iso_646.irv_1991", "iso_ir_6"},
}


def _codec(name: Any) -> str | None:
    if not isinstance(name, str):
        return None
    norm = name.strip().lower().replace("-", "_").replace(" ", "_")
    return next((c for c, names in _CODEC_ALIASES.items() if norm in names), None)


def literal_bytes(value: Any, depth: int = 0) -> bytes | LazyBytes | None:
    """Bytes written in the stream, including protocol 2's ``_codecs.encode(str, 'latin1')``
    (any spelling of the codec ``codecs.lookup`` accepts) and ``bytearray(b'...')``/
    ``bytes(b'...')`` around them."""
    if isinstance(value, (bytes, bytearray, LazyBytes)):
        return value
    if isinstance(value, Call) and depth < 4:
        name = value.func_name
        if name in ("builtins.bytearray", "builtins.bytes") and len(value.args) == 1:
            return literal_bytes(value.args[0], depth + 1)
        if name in ("_codecs.encode", "codecs.encode") and len(value.args) == 2 \
                and isinstance(value.args[0], str):
            codec = _codec(value.args[1])
            try:
                return value.args[0].encode(codec) if codec else None
            except UnicodeEncodeError:
                return None
        return None
    if isinstance(value, str):  # protocol 0/1 numpy data is a latin-1 str
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            return None
    return None


def _state_dict_of(call: Call) -> dict[Any, Any] | None:
    """The ``__dict__`` part of an object's BUILD state, if it has one."""
    state = call.state
    if isinstance(state, Builds):
        merged: dict[Any, Any] = {}
        for s in state:
            part = _state_dict_of_value(s)
            if part:
                merged.update(part)
        return merged
    return _state_dict_of_value(state)


def _state_dict_of_value(state: Any) -> dict[Any, Any] | None:
    if isinstance(state, dict):
        return state
    if isinstance(state, tuple) and len(state) == 2:
        a, b = state
        merged: dict[Any, Any] = {}
        if isinstance(a, dict):
            merged.update(a)
        if isinstance(b, dict):
            merged.update(b)
        if isinstance(a, dict) or isinstance(b, dict):
            return merged
    return None


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return len(value) == 0
    if isinstance(value, Call) and value.func_name in ("collections.OrderedDict",
                                                       "builtins.set", "builtins.dict"):
        return not value.dict_items and not value.list_items and not any(value.args)
    return False


def _device_str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Call) and value.func_name == "torch.device" and value.args:
        kind = value.args[0]
        if len(value.args) > 1 and isinstance(value.args[1], int):
            return f"{kind}:{value.args[1]}"
        return str(kind)
    return None


def _dtype_name(value: Any) -> str | None:
    if isinstance(value, GlobalRef) and value.literal and value.module == "torch":
        return value.name
    return None


class TreeBuilder:
    """Converts one inert pickle value into a :class:`Node` tree.

    ``module_roles`` lets the TorchScript reader say which attributes of a
    scripted module are parameters and buffers. ``nested_loader`` reads a
    checkpoint embedded as bytes (``torch.storage._load_from_bytes``).
    """

    def __init__(
        self,
        *,
        max_depth: int = 150,
        max_nodes: int = 1_000_000,
        script_module_roles: Callable[[Call], dict[str, str] | None] | None = None,
        nested_loader: Callable[[bytes | LazyBytes], Any] | None = None,
        embedded: dict[int, Any] | None = None,
    ):
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.script_module_roles = script_module_roles
        self.nested_loader = nested_loader
        self.count = 0
        self.warnings: list[str] = []
        self._tensors: dict[int, TensorInfo | None] = {}
        self._alive: list[Any] = []
        self._scalar_lists: dict[int, bool] = {}
        self._nested: dict[int, Any] = dict(embedded or {})  # read already by the reader
        self._truncated = False

    # -- entry point -----------------------------------------------------------------
    def build(self, value: Any) -> Node:
        root = self._convert(value, None, 0, set())
        if self._truncated:
            self.warnings.append(
                f"the tree was cut off: deeper than {self.max_depth} levels or more than "
                f"{self.max_nodes:,} entries")
        return root

    # -- generic conversion ----------------------------------------------------------
    def _convert(self, value: Any, key: Any, depth: int, ancestors: set[int]) -> Node:
        self.count += 1
        if depth > self.max_depth or self.count > self.max_nodes:
            self._truncated = True
            return Node("truncated", key, type_name_of(value),
                        note="not shown: too deep or too large")
        if value is None:
            return Node("none", key, "None")
        if isinstance(value, SCALAR_TYPES):
            return Node("scalar", key, type(value).__name__, value)
        if isinstance(value, str):
            return Node("str", key, "str", value)
        if isinstance(value, (bytes, bytearray, LazyBytes)):
            kind = value.kind if isinstance(value, LazyBytes) else type(value).__name__
            return Node("bytes", key, kind, value, note=f"{len(value):,} bytes")
        if isinstance(value, StorageInfo):
            return self._storage_node(value, key)
        if isinstance(value, TensorInfo):  # described outside the pickle (tar format)
            return Node("tensor", key, "torch.Tensor", tensor=value)
        if isinstance(value, GlobalRef):
            return Node("ref", key, "global", value.full_name)
        if isinstance(value, (PersistentRef, ExtensionRef)):
            return Node("ref", key, type(value).__name__, repr(value))
        vid = id(value)
        if vid in ancestors:
            return Node("cycle", key, type_name_of(value), note="refers to an enclosing object")
        ancestors.add(vid)
        try:
            if isinstance(value, dict):
                return self._mapping(Node("dict", key, "dict"), value.items(), depth, ancestors)
            if isinstance(value, (list, tuple, set, frozenset)):
                kind = {list: "list", tuple: "tuple"}.get(type(value), "set")
                return self._sequence(Node(kind, key, type(value).__name__), value, depth,
                                      ancestors)
            if isinstance(value, Call):
                try:
                    return self._call(value, key, depth, ancestors)
                except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
                    # a malformed object: show it as such, keep reading the rest
                    return Node("object", key, type_name_of(value),
                                note=f"could not be interpreted ({type(err).__name__})")
            return Node("value", key, type(value).__name__, repr(value)[:200])
        finally:
            ancestors.discard(vid)

    def _mapping(self, node: Node, items: Any, depth: int, ancestors: set[int]) -> Node:
        for k, v in items:
            node.add(self._convert(v, self._key(k), depth + 1, ancestors))
        return node

    def _sequence(self, node: Node, items: Any, depth: int, ancestors: set[int]) -> Node:
        seq = items if isinstance(items, (list, tuple)) else list(items)
        scalars = self._scalar_lists.get(id(seq))
        if scalars is None:
            scalars = bool(seq) and all(
                v is None or isinstance(v, SCALAR_TYPES) or (isinstance(v, str) and len(v) <= 64)
                for v in seq)
            self._scalar_lists[id(seq)] = scalars
            self._alive.append(seq)
        if scalars:
            # (7, 7), betas, a list of parameter ids: one leaf showing its values (shared,
            # never copied: a file may reference one long list a million times)
            node.value = seq
            node.note = f"{len(seq):,} items"
            self.count += len(seq) // 64
            return node
        for i, v in enumerate(seq):
            node.add(self._convert(v, i, depth + 1, ancestors))
        return node

    @staticmethod
    def _key(k: Any) -> Any:
        if isinstance(k, SafeKey):
            k = k.value
        if k is None or isinstance(k, (str, int, float, bool)):
            return k
        if isinstance(k, tuple) and all(isinstance(x, (str, int, float, bool)) for x in k):
            return k
        return f"<{type_name_of(k)}>"

    # -- calls -------------------------------------------------------------------------
    def _call(self, call: Call, key: Any, depth: int, ancestors: set[int]) -> Node:
        name = call.func_name or ""
        info = self.tensor_info(call)
        if info is not None:
            node = Node("tensor", key, "torch.nn.Parameter" if info.is_parameter else
                        (info.subclass or "torch.Tensor"), tensor=info)
            if info.is_parameter:
                node.role = "parameter"
            return node
        args = call.args
        if name in ("collections.OrderedDict", "collections.defaultdict", "builtins.dict",
                    "collections.Counter"):
            node = Node("dict", key, name)
            items: list[tuple[Any, Any]] = []
            if name in ("collections.Counter", "builtins.dict") and args and isinstance(
                    args[0], dict):
                items.extend(args[0].items())
            items.extend(call.dict_items or [])
            items = _last_wins(items)
            if name == "collections.defaultdict" and args:
                node.note = f"default: {type_name_of(args[0])}"
            state = _state_dict_of(call)
            if state and "_metadata" in state:
                node.note = "state_dict with _metadata"
            return self._mapping(node, items, depth, ancestors)
        if name in ("builtins.set", "builtins.frozenset") and len(args) <= 1:
            items_ = list(args[0]) if args and isinstance(args[0], (list, tuple, set)) else []
            items_.extend(call.list_items or [])
            return self._sequence(Node("set", key, name.split(".")[1]), items_, depth, ancestors)
        if name in ("_codecs.encode", "builtins.bytearray", "builtins.bytes"):
            raw = literal_bytes(call) if name == "_codecs.encode" else (
                literal_bytes(args[0]) if args else b"")
            if raw is not None:
                return Node("bytes", key, name.split(".")[1], raw, note=f"{len(raw):,} bytes")
        if name == "builtins.complex" and len(args) == 2 and all(
                isinstance(a, (int, float)) for a in args):
            return Node("scalar", key, "complex", complex(args[0], args[1]))
        if name == "torch.device":
            return Node("value", key, "torch.device", _device_str(call))
        if name == "torch.Size" and args and isinstance(args[0], tuple):
            return Node("value", key, "torch.Size", f"torch.Size({list(args[0])})")
        if name == "torch.serialization._get_layout" and args:
            return Node("value", key, "torch.layout", str(args[0]))
        if name.startswith(_NUMPY_MODULES) and name.endswith(".scalar"):
            scalar = _numpy_scalar(call)
            if scalar is not None:
                return Node("scalar", key, scalar[0], scalar[1])
        if name.startswith(_NUMPY_MODULES) and name.endswith("._reconstruct"):
            node = self._ndarray(call, key)
            if node is not None:
                return node
        if name in ("numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer"):
            node = self._frombuffer(call, key)
            if node is not None:
                return node
        if name == "numpy.dtype" and args:
            return Node("value", key, "numpy.dtype", f"dtype({args[0]!r})")
        if name == "torch.storage._load_from_bytes" and args and (
                self.nested_loader or id(call) in self._nested):
            nested = self._load_nested(call)
            if nested is not None:
                return self._convert(nested, key, depth + 1, ancestors)
        return self._object(call, key, depth, ancestors)

    def _object(self, call: Call, key: Any, depth: int, ancestors: set[int]) -> Node:
        cls = call.func
        args = call.args
        if call.func_name == "copyreg._reconstructor" and len(args) >= 1:
            cls = args[0]  # protocol 0/1 object: _reconstructor(cls, base, state)
            args = ()
        type_name = type_name_of(cls)
        state = _state_dict_of(call)
        roles = self.script_module_roles(call) if self.script_module_roles else None
        if roles is not None and state is not None:
            return self._script_module(call, type_name, state, roles, key, depth, ancestors)
        if state is not None and isinstance(state.get("_modules"), (dict, Call)) and \
                isinstance(state.get("_parameters"), (dict, Call)):
            return self._module(type_name, state, key, depth, ancestors)
        node = Node("object", key, type_name)
        if args and (call.kind != "reduce" or not state):
            for i, a in enumerate(args):
                node.add(self._convert(a, f"arg{i}", depth + 1, ancestors))
        if call.kwargs:
            for k, v in call.kwargs.items():
                node.add(self._convert(v, self._key(k), depth + 1, ancestors))
        if state is not None:
            for k, v in state.items():
                node.add(self._convert(v, self._key(k), depth + 1, ancestors))
        elif call.state is not None:
            node.add(self._convert(call.state, "state", depth + 1, ancestors))
        for i, v in enumerate(call.list_items or ()):
            node.add(self._convert(v, i, depth + 1, ancestors))
        for k, v in call.dict_items or ():
            node.add(self._convert(v, self._key(k), depth + 1, ancestors))
        return node

    # -- nn.Module ---------------------------------------------------------------------
    def _module(self, type_name: str, state: dict[Any, Any], key: Any, depth: int,
                ancestors: set[int]) -> Node:
        node = Node("module", key, type_name)
        non_persistent = _names(state.get("_non_persistent_buffers_set"))
        for attr, role in (("_parameters", "parameter"), ("_buffers", "buffer")):
            for name, value in _items(state.get(attr)):
                if value is None:
                    continue  # state_dict() skips None parameters and buffers
                child = self._convert(value, self._key(name), depth + 1, ancestors)
                child.role = role
                if role == "buffer" and name in non_persistent:
                    child.role = "non-persistent buffer"
                node.add(child)
        for name, value in _items(state.get("_modules")):
            if value is None:
                continue
            node.add(self._convert(value, self._key(name), depth + 1, ancestors))
        for name, value in state.items():
            if name in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
                continue
            if isinstance(name, str) and name.startswith("_") and _is_empty(value):
                continue
            child = self._convert(value, self._key(name), depth + 1, ancestors)
            child.role = "attribute"
            node.add(child)
        return node

    def _script_module(self, call: Call, type_name: str, state: dict[Any, Any],
                       roles: dict[str, str], key: Any, depth: int, ancestors: set[int]) -> Node:
        node = Node("module", key, type_name)
        for name, value in state.items():
            if isinstance(name, str) and name.startswith("_") and _is_empty(value):
                continue
            child = self._convert(value, self._key(name), depth + 1, ancestors)
            if child.kind == "tensor":
                child.role = roles.get(name, "attribute")
            elif child.kind != "module":
                child.role = "attribute"
            node.add(child)
        return node

    # -- tensors -------------------------------------------------------------------------
    def tensor_info(self, call: Any, depth: int = 0) -> TensorInfo | None:
        """The tensor a rebuild call describes, or None if ``call`` is not one."""
        if not isinstance(call, Call):
            return None
        key = id(call)
        if key in self._tensors:
            return self._tensors[key]
        name = call.func_name or ""
        info = None
        if depth < 8 and (name.startswith((_TORCH_UTILS, "torch._tensor."))):
            try:
                info = self._tensor_from(name[name.rfind(".") + 1:], call, depth)
                if info is not None and call.state is not None:
                    info = self._apply_build(info, call.state)
            except (TypeError, ValueError, IndexError, KeyError, AttributeError):
                info = TensorInfo("unknown", (), problem=f"malformed arguments to {name}")
        self._tensors[key] = info
        self._alive.append(call)  # ids are cache keys: keep every keyed call alive
        return info

    def _apply_build(self, info: TensorInfo, state: Any) -> TensorInfo:
        """A BUILD on a rebuilt tensor is ``tensor.set_(storage, offset, size, stride)``
        (torch's legacy unpickling does this, weights_only included): the tensor the
        file really holds is the one ``state`` describes."""
        if isinstance(state, Builds):
            for s in state:
                info = self._apply_build(info, s)
            return info
        if isinstance(state, tuple) and len(state) == 4:
            rebuilt = self._strided(state[0], state[1], state[2], state[3], None,
                                    info.requires_grad)
            if not isinstance(state[0], StorageInfo):
                rebuilt.problem = "BUILD replaced the tensor with something unreadable"
            rebuilt.is_parameter = info.is_parameter
            return rebuilt
        return info

    def _tensor_from(self, fn: str, call: Call, depth: int) -> TensorInfo | None:
        a = call.args
        if fn in ("_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_tensor"):
            dtype = _dtype_name(a[6]) if fn == "_rebuild_tensor_v3" else None
            return self._strided(a[0], a[1], a[2], a[3], dtype,
                                 requires_grad=bool(a[4]) if len(a) > 4 else False)
        if fn == "_rebuild_qtensor":
            info = self._strided(a[0], a[1], a[2], a[3], None,
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
                    t = self.tensor_info(v, depth + 1)
                    if t is not None:
                        comps[label] = t
                info.components = comps
            info.quantization = q
            return info
        if fn in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            inner = self.tensor_info(a[0], depth + 1)
            if inner is None:
                return None
            info = _copy(inner)
            info.is_parameter = True
            info.requires_grad = bool(a[1])
            return info
        if fn in ("_rebuild_from_type_v2", "_rebuild_from_type"):
            func, new_type, args = a[0], a[1], a[2]
            inner = self.tensor_info(Call(func, tuple(args), "reduce", call.offset), depth + 1)
            if inner is None:
                return None
            info = _copy(inner)
            sub = type_name_of(new_type)
            if sub == "torch.nn.parameter.Parameter":
                info.is_parameter = True
            elif sub not in ("torch.Tensor", "torch._tensor.Tensor"):
                info.subclass = sub
            return info
        if fn == "_rebuild_meta_tensor_no_storage":
            return TensorInfo(_dtype_name(a[0]) or "unknown", _shape(a[1]), _shape(a[2]),
                              device="meta", requires_grad=bool(a[3]),
                              problem="meta tensor: the file holds no data for it")
        if fn == "_rebuild_wrapper_subclass":
            device = _device_str(a[6]) or "unknown"
            return TensorInfo(_dtype_name(a[1]) or "unknown", _shape(a[2]), _shape(a[3]),
                              int(a[4]), device=device, subclass=type_name_of(a[0]),
                              problem="tensor subclass: its data is not stored in the file")
        if fn in ("_rebuild_device_tensor_from_numpy", "_rebuild_device_tensor_from_cpu_tensor"):
            inner = self.tensor_info(a[0], depth + 1)
            if inner is None and isinstance(a[0], Call):
                nd = self._ndarray(a[0], None)
                inner = nd.tensor if nd is not None else None
            if inner is None:
                return None
            info = _copy(inner)
            info.device = _device_str(a[2]) or info.device
            info.requires_grad = bool(a[3])
            return info
        if fn == "_rebuild_sparse_tensor":
            layout_v = a[0]
            layout = str(layout_v.args[0]) if isinstance(layout_v, Call) and layout_v.args \
                else type_name_of(layout_v)
            layout = _LAYOUTS.get(layout, layout)
            data = a[1]
            comps = {}
            size: tuple[int, ...] = ()
            labels = (["indices", "values"] if layout == "sparse_coo"
                      else ["compressed_indices", "plain_indices", "values"])
            tensors = [self.tensor_info(x, depth + 1) for x in data]
            for label, t in zip(labels, [t for t in tensors if t is not None]):
                comps[label] = t
            for x in data:
                if isinstance(x, (tuple, list)) and all(isinstance(i, int) for i in x):
                    size = tuple(x)
                elif isinstance(x, Call) and x.func_name == "torch.Size" and x.args:
                    size = _shape(x.args[0])
            values = comps.get("values")
            return TensorInfo(values.dtype if values else "unknown", size, None,
                              device=values.device if values else "cpu", layout=layout,
                              components=comps)
        if fn == "_rebuild_nested_tensor":
            buf = self.tensor_info(a[0], depth + 1)
            if buf is None:
                return None
            return TensorInfo(buf.dtype, (), None, device=buf.device, layout="nested",
                              components={"buffer": buf})
        return None

    def _strided(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None,
                 requires_grad: bool) -> TensorInfo:
        shape = _shape(size)
        strides = _shape(stride) if stride is not None else None
        if not isinstance(storage, StorageInfo) and isinstance(storage, Call) and \
                storage.func_name == "torch.storage._load_from_bytes" and (
                    self.nested_loader or id(storage) in self._nested):
            storage = self._load_nested(storage)
        st = storage if isinstance(storage, StorageInfo) else None
        info = TensorInfo(
            dtype=dtype or (st.dtype if st else "unknown"),
            shape=shape,
            stride=strides,
            storage_offset=offset if isinstance(offset, int) else 0,
            storage=st,
            device=st.location if st else "unknown",
            requires_grad=requires_grad,
        )
        info.problem = check_tensor(info, offset, st)
        return info

    def _load_nested(self, call: Call) -> Any:
        """The value of a checkpoint embedded as bytes, read once however often it is used."""
        if id(call) in self._nested:
            return self._nested[id(call)]
        raw = literal_bytes(call.args[0]) if call.args else None
        value = self.nested_loader(raw) if raw is not None and self.nested_loader else None
        self._nested[id(call)] = value
        self._alive.append(call)
        return value

    def _storage_node(self, storage: StorageInfo, key: Any) -> Node:
        info = TensorInfo(storage.dtype, (storage.numel,), (1,), 0, storage,
                          device=storage.location, problem=storage.problem)
        return Node("tensor", key, "torch.storage", tensor=info, note="a bare storage")

    # -- numpy -------------------------------------------------------------------------
    def _ndarray(self, call: Call, key: Any) -> Node | None:
        """``numpy.core.multiarray._reconstruct`` + BUILD state: an array in the stream."""
        state = call.state
        if not (isinstance(state, tuple) and len(state) == 5):
            return None
        _version, shape, dtype_call, fortran, raw = state
        return self._array_node(key, raw, dtype_call, shape, bool(fortran))

    def _frombuffer(self, call: Call, key: Any) -> Node | None:
        """``numpy.core.numeric._frombuffer(buffer, dtype, shape, order)``: protocol 5 arrays."""
        if len(call.args) != 4:
            return None
        raw, dtype_call, shape, order = call.args
        return self._array_node(key, raw, dtype_call, shape, order == "F")

    def _array_node(self, key: Any, raw: Any, dtype_call: Any, shape: Any,
                    fortran: bool) -> Node:
        code, order = _numpy_dtype(dtype_call)
        shape_t = _shape(shape)
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


def _last_wins(items: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Dict semantics for SETITEMS on an OrderedDict: a repeated key keeps its first
    position and its last value."""
    merged: dict[Any, tuple[Any, Any]] = {}
    slots: dict[int, Any] = {}  # id(key) -> its dict key: one hash per distinct key object
    try:
        for k, v in items:
            slot = slots.get(id(k))
            if slot is None:
                slot = slots[id(k)] = _Hashed(safe_key(k))
            merged[slot] = (k, v)
    except TypeError:  # an unhashable key: a real unpickler would have failed here
        return items
    return list(merged.values())


class _Hashed:
    """A key with its hash computed once (a tuple's hash is not cached by Python)."""

    __slots__ = ("hash", "key")

    def __init__(self, key: Any):
        self.key = key
        self.hash = hash(key)

    def __hash__(self) -> int:
        return self.hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Hashed) and (other.key is self.key or other.key == self.key)


def _copy(info: TensorInfo) -> TensorInfo:
    return dataclasses.replace(info)


def _items(value: Any) -> list[tuple[Any, Any]]:
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, Call):
        items = list(value.dict_items or [])
        if value.args and isinstance(value.args[0], dict):
            items = list(value.args[0].items()) + items
        return items
    return []


def _names(value: Any) -> set[str]:
    if isinstance(value, (set, frozenset, list, tuple)):
        return {v for v in value if isinstance(v, str)}
    if isinstance(value, Call):
        items = list(value.list_items or [])
        if value.args and isinstance(value.args[0], (list, tuple, set)):
            items.extend(value.args[0])
        return {v for v in items if isinstance(v, str)}
    return set()


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, Call) and value.func_name == "torch.Size" and value.args:
        value = value.args[0]
    if not isinstance(value, (tuple, list)) or len(value) > MAX_NDIM:
        raise ValueError("not a shape")
    for v in value:
        # torch sizes and strides are 64-bit: a bigger integer is no shape (and multiplying
        # megabyte integers for every tensor would take minutes)
        if type(v) is not int or not -_INT64 <= v < _INT64:
            raise ValueError("not a shape")
    return tuple(value)


def check_tensor(info: TensorInfo, offset: Any, storage: StorageInfo | None) -> str | None:
    """Why a tensor cannot be read from its storage, or None."""
    if storage is None:
        return "storage record not found in the file"
    if storage.problem:
        return storage.problem
    if not isinstance(offset, int) or not 0 <= offset < _INT64:
        return "malformed storage offset"
    if not 0 <= storage.numel < _INT64:
        return "malformed storage size"
    if info.shape and min(info.shape) < 0:
        return "negative size in shape"
    numel = math.prod(info.shape)
    if numel > ABSURD_NUMEL:
        return f"absurd number of elements ({numel:,})"
    if info.stride is not None:
        if len(info.stride) != len(info.shape):
            return "stride and shape have different lengths"
        if info.stride and min(info.stride) < 0:
            return "negative stride"
    if info.dtype not in dtypes.DTYPES:
        return f"unknown dtype {info.dtype}"
    item = dtypes.itemsize(info.dtype) or 1
    storage_item = dtypes.itemsize(storage.dtype) or 1
    available = storage.numel * storage_item // item
    needed = extent(info.shape, info.stride, offset)
    if needed > available:
        return f"tensor needs {needed:,} elements but its storage holds {available:,}"
    return None


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
