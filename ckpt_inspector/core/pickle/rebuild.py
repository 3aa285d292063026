"""Turn the inert values of :mod:`values` into the node tree.

This is where the reader understands what torch pickles mean without running
them: ``torch._utils._rebuild_tensor_v2(storage, ...)`` becomes a tensor node,
``collections.OrderedDict()`` plus ``SETITEMS`` a dict, an object whose state
has ``_modules`` and ``_parameters`` an ``nn.Module`` whose tensors are keyed
like its ``state_dict()``, ``numpy.core.multiarray.scalar`` a number, and so
on (:mod:`rebuilders` holds one handler per function). Anything it does not
recognise stays visible as an object with its arguments and state.

The conversion recurses, so it is bounded: nesting deeper than
``max_depth`` and trees larger than ``max_nodes`` are cut off with a warning.
Cycles become ``cycle`` nodes. An object the file uses in several places is shown
in each of them, as torch would load it, while the copies cost at most
``max_repeated`` nodes in all; past that a repeated use becomes a ``ref`` leaf
"(same object as PATH)", so a file that nests shared references (``a = [a, a]``
twenty times: 2**20 paths in 1.6 KB) builds a tree linear in its size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.pickle.arguments import (
    literal_bytes,
    shape_of,
    state_dict_of,
    type_name_of,
)
from ckpt_inspector.core.pickle.rebuilders import tensor_rebuilder, value_rebuilder
from ckpt_inspector.core.pickle.values import (
    Builds,
    Call,
    ExtensionRef,
    GlobalRef,
    LazyBytes,
    PersistentRef,
    SafeKey,
)
from ckpt_inspector.core.tensors import extent
from ckpt_inspector.core.tree import Node, StorageInfo, TensorInfo

SCALAR_TYPES = (bool, int, float, complex)
ABSURD_NUMEL = 1 << 48
_INT64 = 1 << 63


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (dict, list, tuple, set, frozenset)):
        return len(value) == 0
    if isinstance(value, Call) and value.func_name in ("collections.OrderedDict",
                                                       "builtins.set", "builtins.dict"):
        return not value.dict_items and not value.list_items and not any(value.args)
    return False


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
        max_repeated: int = 20_000,
        script_module_roles: Callable[[Call], dict[str, str] | None] | None = None,
        nested_loader: Callable[[bytes | LazyBytes], Any] | None = None,
        embedded: dict[int, Any] | None = None,
    ):
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.max_repeated = max_repeated
        self.script_module_roles = script_module_roles
        self.nested_loader = nested_loader
        self.count = 0
        self.warnings: list[str] = []
        self._tensors: dict[int, TensorInfo | None] = {}
        self._alive: list[Any] = []
        self._scalar_lists: dict[int, bool] = {}
        self._nested: dict[int, Any] = dict(embedded or {})  # read already by the reader
        self._truncated = False
        # id of each object converted -> (its first node, how many nodes it took)
        self._seen: dict[int, tuple[Node, int]] = {}
        self._repeating = 0  # > 0 while converting an object again
        self.repeated = 0  # nodes made while converting objects again
        self._same: list[tuple[Node, Node]] = []  # (reference leaf, the node it names)

    # -- entry point -----------------------------------------------------------------
    def build(self, value: Any) -> Node:
        root = self.convert(value, None, 0, set())
        self._name_shared(root)
        if self._truncated:
            self.warnings.append(
                f"the tree was cut off: deeper than {self.max_depth} levels or more than "
                f"{self.max_nodes:,} entries")
        return root

    def _name_shared(self, root: Node) -> None:
        """Say where each reference leaf's object is shown (known once the tree is whole)."""
        if not self._same:
            return
        for ref, first in self._same:
            top = first
            while top.parent is not None:
                top = top.parent
            if top is not root:  # its first node was left out (a malformed object)
                continue
            path = first.path()
            where = ".".join(str(k) for k in path) if path else "the root"
            ref.value = f"(same object as {where})"
        self.warnings.append(
            f"the file uses the same objects in many places: after {self.max_repeated:,} "
            f"repeated entries, {len(self._same):,} further uses are shown as "
            "'same object as ...' instead of in full again")
        self._same = []

    # -- generic conversion ----------------------------------------------------------
    def convert(self, value: Any, key: Any, depth: int, ancestors: set[int]) -> Node:
        self.count += 1
        if self._repeating:
            self.repeated += 1
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
        seen = self._seen.get(vid)
        if seen is not None and seen[1] > 1:  # a container used again
            if self.repeated + seen[1] > self.max_repeated:
                ref = Node("ref", key, type_name_of(value), "(same object)",
                           note="shown in full where the file first uses it")
                self._same.append((ref, seen[0]))
                return ref
            self._repeating += 1
            try:
                return self._container(value, key, depth, ancestors)
            finally:
                self._repeating -= 1
        start = self.count
        node = self._container(value, key, depth, ancestors)
        if seen is None:
            self._seen[vid] = (node, self.count - start + 1)
            self._alive.append(value)  # ids are memo keys: keep the object alive
        return node

    def _container(self, value: Any, key: Any, depth: int, ancestors: set[int]) -> Node:
        vid = id(value)
        ancestors.add(vid)
        try:
            if isinstance(value, dict):
                return self.mapping(Node("dict", key, "dict"), value.items(), depth, ancestors)
            if isinstance(value, (list, tuple, set, frozenset)):
                kind = {list: "list", tuple: "tuple"}.get(type(value), "set")
                return self.sequence(Node(kind, key, type(value).__name__), value, depth,
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

    def mapping(self, node: Node, items: Any, depth: int, ancestors: set[int]) -> Node:
        for k, v in items:
            node.add(self.convert(v, self._key(k), depth + 1, ancestors))
        return node

    def sequence(self, node: Node, items: Any, depth: int, ancestors: set[int]) -> Node:
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
            node.add(self.convert(v, i, depth + 1, ancestors))
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
        info = self.tensor_info(call)
        if info is not None:
            node = Node("tensor", key, "torch.nn.Parameter" if info.is_parameter else
                        (info.subclass or "torch.Tensor"), tensor=info)
            if info.is_parameter:
                node.role = "parameter"
            return node
        handler = value_rebuilder(call.func_name or "")
        node = handler(self, call, key, depth, ancestors) if handler else None
        return node if node is not None else self._object(call, key, depth, ancestors)

    def _object(self, call: Call, key: Any, depth: int, ancestors: set[int]) -> Node:
        cls = call.func
        args = call.args
        if call.func_name == "copyreg._reconstructor" and len(args) >= 1:
            cls = args[0]  # protocol 0/1 object: _reconstructor(cls, base, state)
            args = ()
        type_name = type_name_of(cls)
        state = state_dict_of(call)
        roles = self.script_module_roles(call) if self.script_module_roles else None
        if roles is not None and state is not None:
            return self._script_module(call, type_name, state, roles, key, depth, ancestors)
        if state is not None and isinstance(state.get("_modules"), (dict, Call)) and \
                isinstance(state.get("_parameters"), (dict, Call)):
            return self._module(type_name, state, key, depth, ancestors)
        node = Node("object", key, type_name)
        if args and (call.kind != "reduce" or not state):
            for i, a in enumerate(args):
                node.add(self.convert(a, f"arg{i}", depth + 1, ancestors))
        if call.kwargs:
            for k, v in call.kwargs.items():
                node.add(self.convert(v, self._key(k), depth + 1, ancestors))
        if state is not None:
            for k, v in state.items():
                node.add(self.convert(v, self._key(k), depth + 1, ancestors))
        elif call.state is not None:
            node.add(self.convert(call.state, "state", depth + 1, ancestors))
        for i, v in enumerate(call.list_items or ()):
            node.add(self.convert(v, i, depth + 1, ancestors))
        for k, v in call.dict_items or ():
            node.add(self.convert(v, self._key(k), depth + 1, ancestors))
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
                child = self.convert(value, self._key(name), depth + 1, ancestors)
                child.role = role
                if role == "buffer" and name in non_persistent:
                    child.role = "non-persistent buffer"
                node.add(child)
        for name, value in _items(state.get("_modules")):
            if value is None:
                continue
            node.add(self.convert(value, self._key(name), depth + 1, ancestors))
        for name, value in state.items():
            if name in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
                continue
            if isinstance(name, str) and name.startswith("_") and _is_empty(value):
                continue
            child = self.convert(value, self._key(name), depth + 1, ancestors)
            child.role = "attribute"
            node.add(child)
        return node

    def _script_module(self, call: Call, type_name: str, state: dict[Any, Any],
                       roles: dict[str, str], key: Any, depth: int, ancestors: set[int]) -> Node:
        node = Node("module", key, type_name)
        for name, value in state.items():
            if isinstance(name, str) and name.startswith("_") and _is_empty(value):
                continue
            child = self.convert(value, self._key(name), depth + 1, ancestors)
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
        rebuild = tensor_rebuilder(name) if depth < 8 else None
        if rebuild is not None:
            try:
                info = rebuild(self, call, depth)
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
            rebuilt = self.strided(state[0], state[1], state[2], state[3], None,
                                    info.requires_grad)
            if not isinstance(state[0], StorageInfo):
                rebuilt.problem = "BUILD replaced the tensor with something unreadable"
            rebuilt.is_parameter = info.is_parameter
            return rebuilt
        return info

    def strided(self, storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None,
                 requires_grad: bool) -> TensorInfo:
        shape = shape_of(size)
        strides = shape_of(stride) if stride is not None else None
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

    def nested_value(self, call: Call) -> Any:
        """What ``torch.storage._load_from_bytes(b)`` holds, where the reader can read it
        (None where it cannot)."""
        if self.nested_loader or id(call) in self._nested:
            return self._load_nested(call)
        return None

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
