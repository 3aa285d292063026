"""How much memory a checkpoint's tensors take: as saved, cast to float16 or bfloat16, and,
for a training checkpoint, which part is optimizer state and which the model's weights.

What ``info --json`` prints as ``totals.memory`` and the window's summary shows (whether
that fits on a device is :mod:`ckpt_inspector.core.fit`). Qt-free and torch-free: sizes
come from dtypes and shapes, never from reading tensor data.

How bytes are counted:

* a tensor takes its elements' bytes as stored (a ggml block type its blocks, as llama.cpp
  holds it); tensors that share one storage (tied weights, views) count that storage once,
  as ``torch.load`` allocates it, and a view saved alone counts its whole storage;
* cast to float16 or bfloat16, floating-point tensors (float8 and ggml's quantized types
  included: dequantized) take 2 bytes an element; integer, bool, complex and torch's
  quantized tensors stay as saved (``model.half()`` casts only floating-point ones);
* the parts: **optimizer** state is what lies under an optimizer's key (``optimizer``,
  ``optimizer_states`` of Lightning, ``optim`` of a DCP folder, a DeepSpeed
  ``*_optim_states`` file) or in a dict shaped as ``Optimizer.state_dict()`` (``state`` and
  ``param_groups``); **weights** are the model's tensors (under ``state_dict``, ``model``
  ... when a training checkpoint names them, else every tensor a ``state_dict()`` holds);
  **other** is the rest (scheduler or callback tensors, attributes of a pickled module,
  DeepSpeed's per-file copies).

DeepSpeed ZeRO: the model the window shows is gathered from the optimizer's fp32
partitions, so its weights are those bytes again: ``weights`` says what the consolidated
model takes, ``saved`` what the files hold (the weights not counted twice).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable
from operator import attrgetter, gt, not_, or_
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.chunks import in_slices
from ckpt_inspector.core.tensors import DataSource
from ckpt_inspector.core.tree import Checkpoint, Node, TensorInfo

# keys whose value is an optimizer's state (a dotted key's first part: DCP's ``optim.``)
OPTIMIZER_KEYS = frozenset({
    "optimizer", "optimizers", "optimizer_states", "optimizer_state", "optimizer_state_dict",
    "optimizer_states_dict", "optim", "optims", "optim_state", "optim_states",
    "optim_state_dict", "opt_state", "opt_state_dict"})
OPTIMIZER_SUFFIXES = ("_optim_states", "_optimizer_states")  # DeepSpeed's per-rank files
OPTIMIZER_WORDS = ("optim", "opt_state")  # in every one of those keys
# keys of a training checkpoint whose value is the model's state_dict
MODEL_KEYS = frozenset({"state_dict", "model", "model_state_dict", "model_state", "module",
                        "net", "network"})
OPTIMIZER_DICT = frozenset({"state", "param_groups"})  # what Optimizer.state_dict() holds
SEARCH_DEPTH = 3  # how deep below the root an optimizer's state_dict is looked for
FLAT_KEY_LAYOUTS = frozenset({"dcp"})  # the root's keys are dotted paths
DERIVED_LAYOUTS = frozenset({"deepspeed-zero"})  # pieced tensors gathered from others
HALF = 2  # bytes of a float16 or bfloat16 element
HALVES_PER_ELEMENT = {"float4_e2m1fn_x2": 2}  # one element of these holds two values
NOT_IN_STATE_DICT = ("non-persistent buffer", "attribute")  # Node.in_state_dict

_DTYPE, _TENSOR, _ROLE = attrgetter("dtype"), attrgetter("tensor"), attrgetter("role")
_LAYOUT_PROBLEM, _STORAGE_SOURCE = attrgetter("layout", "problem"), attrgetter("storage.source")
_STORED = attrgetter("storage.source.nbytes")
_NBYTES, _KEY, _CHILDREN = attrgetter("nbytes"), attrgetter("key"), attrgetter("children")


def memory_totals(ckpt: Checkpoint, nodes: list[Node], ts: list[TensorInfo] | None = None,
                  by_dtype: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    """``totals.memory``: bytes of every tensor (``nodes``: the checkpoint's tensor nodes
    in tree order; ``ts``: their tensors, when the caller has them) as saved and cast to
    half precision, and the parts ``weights``, ``optimizer`` (``None`` when no optimizer
    state is found) and ``other`` (``None`` when empty), each ``{"tensors", "saved",
    "float16", "bfloat16"}``; ``optimizer_share``: the optimizer's part of ``saved``.
    ``by_dtype``: ``totals``' sums by dtype, when each tensor is a plain strided one with a
    storage of its own that holds just its bytes (the whole then costs nothing more)."""
    weights, optimizer, other = split(ckpt, nodes)
    derived = _derived(ckpt, nodes)
    held = [n for n in nodes if id(n) not in derived] if derived else nodes
    if by_dtype is not None and held is nodes:
        saved, half = from_dtypes(by_dtype)
        whole = {"tensors": len(nodes), "saved": saved, "float16": half, "bfloat16": half}
    else:
        whole = part(held, ts if held is nodes else None)
    saved, half = whole["saved"], whole["float16"]
    plain = by_dtype is not None
    out: dict[str, Any] = {
        "saved": saved, "float16": half, "bfloat16": half,
        "weights": whole if len(weights) == len(nodes) and not derived else
        part(weights, plain=plain),
        "optimizer": part(optimizer, plain=plain) if optimizer is not None else None,
        "other": part(other, plain=plain) if other else None,
    }
    if optimizer is not None and saved:
        out["optimizer_share"] = round(out["optimizer"]["saved"] / saved, 4)
    if derived:
        out["note"] = ("the weights are gathered from the optimizer's fp32 partitions: "
                       "counted in the optimizer state, not again in saved")
    return out


def from_dtypes(by_dtype: dict[str, dict[str, int]]) -> tuple[int, int]:
    """(bytes as saved, bytes cast to half precision) from sums by dtype (``{"numel",
    "nbytes"}`` each) of tensors that each hold just their own storage."""
    saved = half = 0
    for name, sums in by_dtype.items():
        saved += sums["nbytes"]
        d = dtypes.get(name)
        half += sums["numel"] * HALF * HALVES_PER_ELEMENT.get(name, 1) \
            if d is not None and d.kind == "float" else sums["nbytes"]
    return saved, half


def part(nodes: list[Node], ts: list[TensorInfo] | None = None,
         plain: bool = False) -> dict[str, int]:
    """The figures of some tensor nodes (``plain``: each is known to hold just its own
    storage, see :func:`memory_totals`)."""
    ts = list(map(_TENSOR, nodes)) if ts is None else ts
    found = _sum_by_dtype(list(map(_DTYPE, ts)), list(map(_STORED, ts))) if plain else None
    saved, half = found if found is not None else sizes(ts)
    return {"tensors": len(nodes), "saved": saved, "float16": half, "bfloat16": half}


# -- the parts ------------------------------------------------------------------------------
def split(ckpt: Checkpoint, nodes: list[Node]
          ) -> tuple[list[Node], list[Node] | None, list[Node]]:
    """The tensor nodes (in tree order) as (weights, optimizer state or None when there is
    none, other)."""
    roots = optimizer_roots(ckpt.root, ckpt.format in FLAT_KEY_LAYOUTS)
    if not roots:
        weights, other = _by_role(nodes)
        return weights, None, other
    in_optimizer = _below(nodes, roots)
    optimizer = list(itertools.compress(nodes, in_optimizer))
    models = model_roots(ckpt)
    if not models:
        weights, other = _by_role(list(itertools.compress(nodes, map(not_, in_optimizer))))
        return weights, optimizer, other
    in_model = list(map(gt, _below(nodes, models), in_optimizer))  # and not the optimizer's
    weights, other = _by_role(list(itertools.compress(nodes, in_model)))
    other += itertools.compress(nodes, map(not_, map(or_, in_model, in_optimizer)))
    return weights, optimizer, other


def _below(nodes: list[Node], roots: list[Node]) -> bytearray:
    """Which of ``nodes`` (tensor nodes in tree order) lie below one of ``roots`` (or are
    one): a subtree's tensors are a run of them, found from its first tensor and the first
    one after it, without a step per tensor."""
    mask = bytearray(len(nodes))
    position: dict[int, int] | None = None
    for root in roots:
        first = _first_tensor(root)
        if first is None:
            continue
        try:
            start = nodes.index(first)
            after = _first_tensor_after(root)
            stop = nodes.index(after, start) if after is not None else len(nodes)
        except ValueError:  # not in tree order: one by one
            if position is None:
                position = {id(n): i for i, n in enumerate(nodes)}
            for n in root.walk():
                i = position.get(id(n))
                if i is not None:
                    mask[i] = 1
            continue
        mask[start:stop] = b"\x01" * (stop - start)
    return mask


def _first_tensor(root: Node) -> Node | None:
    return next((n for n in root.walk() if n.kind == "tensor"), None)


def _first_tensor_after(root: Node) -> Node | None:
    """The first tensor node after ``root``'s subtree in tree order."""
    node = root
    while node.parent is not None:
        kids = node.parent.children
        row = node.row if node.row < len(kids) and kids[node.row] is node else \
            kids.index(node)
        for sibling in itertools.islice(kids, row + 1, None):
            found = _first_tensor(sibling)
            if found is not None:
                return found
        node = node.parent
    return None


def optimizer_roots(root: Node, flat_keys: bool = False) -> list[Node]:
    """The nodes under which optimizer state lies: children of the root (or of containers
    near it) named as an optimizer, and dicts shaped as an optimizer's ``state_dict()``.
    ``flat_keys``: the root's keys are dotted paths (a DCP folder's ``optim.state.0.exp_avg``
    tensors), looked at one by one."""
    if _is_optimizer_dict(root):
        return [root]  # a file that is one optimizer's state_dict (optimizer.pt)
    found: list[Node] = []
    if flat_keys:
        found += [k for k in _named(root.children, _optimizer_key, OPTIMIZER_WORDS)
                  if k.kind == "tensor" or k.children]
    taken = set(map(id, found))
    stack = [(k, 1) for k in filter(_CHILDREN, root.children) if id(k) not in taken]
    while stack:  # containers only: a state_dict's 100,000s of tensors are not looked at
        node, depth = stack.pop()
        if node.kind == "tensor":
            continue
        if _is_optimizer_dict(node) or _optimizer_key(node.key):
            found.append(node)
        elif depth < SEARCH_DEPTH:
            stack += [(k, depth + 1) for k in filter(_CHILDREN, node.children)]
    return found


def model_roots(ckpt: Checkpoint) -> list[Node]:
    """Children of the root that hold the model's weights in a training checkpoint
    (``state_dict`` of Lightning, ``model`` ...; the ``model.`` keys of a DCP folder)."""
    kids = ckpt.root.children
    if ckpt.format in FLAT_KEY_LAYOUTS:
        return _named(kids, lambda k: _head(k) in MODEL_KEYS, MODEL_KEYS)
    return [k for k in kids if k.is_container and k.key in MODEL_KEYS]


def _named(kids: list[Node], test: Any, words: Iterable[str]) -> list[Node]:
    """The ``kids`` whose key passes ``test``, after a first pass in C over all the keys
    for any of ``words`` (a state_dict's root holds up to 100,000s of them)."""
    keys = list(map(_KEY, kids))
    text = "\n".join(map(str, keys))
    if not any(map(text.__contains__, words)):
        return []
    return [k for k, key in zip(kids, keys) if test(key)]


def _head(key: Any) -> str | None:
    return key.partition(".")[0] if type(key) is str else None


def _optimizer_key(key: Any) -> bool:
    head = _head(key)
    return head is not None and (head in OPTIMIZER_KEYS or head.endswith(OPTIMIZER_SUFFIXES))


def _is_optimizer_dict(node: Node) -> bool:
    kids = node.children
    return node.kind == "dict" and 2 <= len(kids) <= 8 and \
        {k.key for k in kids} >= OPTIMIZER_DICT


def _by_role(nodes: list[Node]) -> tuple[list[Node], list[Node]]:
    """(tensors a ``state_dict()`` holds, the others: attributes, non-persistent
    buffers)."""
    roles: set[Any] = set()
    for part in in_slices(nodes):
        roles.update(map(_ROLE, part))
    if not roles & set(NOT_IN_STATE_DICT):
        return list(nodes), []
    return ([n for n in nodes if n.role not in NOT_IN_STATE_DICT],
            [n for n in nodes if n.role in NOT_IN_STATE_DICT])


def _derived(ckpt: Checkpoint, nodes: list[Node]) -> set[int]:
    """Tensors of a layout that gathers them from other tensors it also lists (DeepSpeed's
    fp32 weights from the optimizer's partitions): ids of their nodes."""
    if ckpt.format not in DERIVED_LAYOUTS:
        return set()
    return {id(n) for n in nodes if n.tensor is not None and n.tensor.pieces is not None}


# -- the bytes ------------------------------------------------------------------------------
def sizes(ts: list[TensorInfo]) -> tuple[int, int]:
    """(bytes as saved, bytes cast to float16/bfloat16) of ``ts``, a storage shared by
    several counted once."""
    fast = _plain_sizes(ts)
    if fast is not None:
        return fast
    held: dict[int, tuple[int, int]] = {}
    for t in ts:
        st = t.storage
        src = st.source if st is not None else None
        stored = src.stored_nbytes if src is not None else 0
        own = t.nbytes if t.shape_known else 0
        pair = (max(own, stored), half_nbytes(t, stored))
        key = id(src) if src is not None else id(t)
        old = held.get(key)
        held[key] = pair if old is None else (max(old[0], pair[0]), max(old[1], pair[1]))
    return sum(p[0] for p in held.values()), sum(p[1] for p in held.values())


def half_nbytes(t: TensorInfo, stored: int = 0) -> int:
    """Bytes of ``t`` cast to float16 (or bfloat16) if it is floating point, else as
    saved; ``stored``: the bytes of its storage (a view's whole storage is cast)."""
    if not t.shape_known:
        return 0
    if t.layout != "strided" and t.components:
        return sum(half_nbytes(c) for c in t.components.values())
    d = dtypes.get(t.dtype)
    if d is None or d.kind != "float":
        return max(t.nbytes, stored)
    elements = t.numel
    if d.block is None and d.itemsize:
        elements = max(elements, stored // d.itemsize)
    return elements * HALF * HALVES_PER_ELEMENT.get(t.dtype, 1)


def _plain_sizes(ts: list[TensorInfo]) -> tuple[int, int] | None:
    """:func:`sizes` with no Python step per tensor (a few passes in C), for plain strided
    tensors of dtypes without blocks, each with a storage whose bytes are its ``nbytes``
    (None otherwise). A storage holds its tensor whole (readers mark a tensor that runs
    past its storage with a ``problem``), so its bytes are what the tensor takes."""
    if not ts:
        return 0, 0
    if set(map(_LAYOUT_PROBLEM, ts)) != {("strided", None)}:
        return None
    try:
        sources = list(map(_STORAGE_SOURCE, ts))
    except AttributeError:  # a tensor without a storage record
        return None
    kinds = set(map(type, sources))
    if None in sources or any(kind.stored_nbytes is not DataSource.stored_nbytes
                              for kind in kinds):
        return None
    dtype_of = list(map(_DTYPE, ts))
    stored = list(map(_NBYTES, sources))
    # sources compare by identity (then a set of them is a set of ids, without the ints)
    by_identity = all(k.__hash__ is object.__hash__ and k.__eq__ is object.__eq__
                      for k in kinds)
    distinct = len(set(sources)) if by_identity else len(set(map(id, sources)))
    if distinct < len(sources):  # shared storages: each once
        keep = list(dict(zip(map(id, sources), range(len(sources)))).values())
        dtype_of = list(map(dtype_of.__getitem__, keep))
        stored = list(map(stored.__getitem__, keep))
    return _sum_by_dtype(dtype_of, stored)


def _sum_by_dtype(dtype_of: list[str], stored: list[int]) -> tuple[int, int] | None:
    """(bytes as saved, bytes cast to half precision) of tensors of dtypes ``dtype_of``
    each holding ``stored`` bytes (None when a dtype has blocks or is unknown)."""
    counts = Counter(dtype_of)
    known = {name: dtypes.get(name) for name in counts}
    if not all(d is not None and d.itemsize and d.block is None for d in known.values()) \
            or set(map(type, stored)) - {int}:
        return None
    saved = half = 0
    for name, d in known.items():
        assert d is not None
        b = sum(stored) if len(counts) == 1 else \
            sum(itertools.compress(stored, map(name.__eq__, dtype_of)))
        saved += b
        half += b // d.itemsize * HALF * HALVES_PER_ELEMENT.get(name, 1) \
            if d.kind == "float" else b
    return saved, half
