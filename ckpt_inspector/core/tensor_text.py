"""The JSON text of every tensor of a checkpoint at once (``info --json``'s ``tensors``).

:func:`tensors_json` gives what :func:`~ckpt_inspector.core.summary.tensor_json` gives for
each ``(path, node)``, for a state_dict of 100,000s of tensors in a fraction of the time:
what would be checked per tensor (types of the names and dimensions, the kind of tensor)
is checked once for all of them with calls in C, and what tensors have in common (dtype,
shape, file, ...) is written once and looked up. Anything the checks do not cover goes
tensor by tensor through ``tensor_json``, so the text is the same either way.
"""

from __future__ import annotations

import itertools
from json.encoder import encode_basestring_ascii as _js
from operator import attrgetter, itemgetter
from typing import Any

from ckpt_inspector.core.summary import _shared_parts, tensor_json
from ckpt_inspector.core.tree import Node, TensorInfo

# what a record's shared text depends on (see summary._shared_parts); the tensor's own
# storage is not in it, so tensors with equal attributes share one entry of the cache
_SIG = attrgetter("dtype", "shape", "stride", "storage_offset", "requires_grad", "device",
                  "problem", "file", "layout", "quantization", "subclass", "pieces")
_STORAGE_SIG = attrgetter("dtype", "numel", "location")
_TENSOR, _STORAGE, _KEY = (attrgetter(a) for a in ("tensor", "storage", "key"))
_SHAPE, _STRIDE, _OFFSET, _GRAD, _NUMEL = (attrgetter(a) for a in (
    "shape", "stride", "storage_offset", "requires_grad", "numel"))
_FIRST = itemgetter(0)
_INELIGIBLE = ("", "")  # a signature whose tensors tensor_json writes the long way


def tensors_json(pairs: list[tuple[list[Any], Node]], shared: dict[int, list[str]]) -> list[str]:
    """``[tensor_json(path, node, shared) for path, node in pairs]``, faster for a flat
    state_dict (each path one string, each tensor a plain one with its own storage)."""
    slow: dict[tuple[Any, ...], tuple[str, str]] = {}  # tensor_json's own cache
    if not _plain(pairs):
        return [tensor_json(p, n, shared, slow) for p, n in pairs]
    cache: dict[tuple[Any, ...], tuple[str, str]] = {}
    out: list[str] = []
    add = out.append
    js = _js
    sig_of, storage_sig_of = _SIG, _STORAGE_SIG
    for path, node in pairs:
        t = node.tensor
        st = t.storage
        source = st.source
        sig = (sig_of(t), storage_sig_of(st), node.role)
        try:
            parts = cache.get(sig)
        except TypeError:  # an unhashable attribute (quantization's dict, pieces)
            parts = _INELIGIBLE
        if parts is None:
            parts = cache[sig] = _parts(t, st, node.role)
        if parts is _INELIGIBLE or source is None or (shared and id(source) in shared):
            add(tensor_json(path, node, shared, slow))
            continue
        name = path[0]
        key = js(name)
        add(f'{{"key": {key}, "path": [{key}], {parts[0]}'
            f'{key if st.key == name else js(st.key)}{parts[1]}')
    return out


def _parts(t: TensorInfo, st: Any, role: str | None) -> tuple[str, str]:
    if t.layout != "strided" or t.quantization or t.subclass or t.pieces is not None or \
            not (t.stride is None or type(t.stride) is tuple):
        return _INELIGIBLE
    return _shared_parts(t, st, role)


def _plain(pairs: list[tuple[list[Any], Node]]) -> bool:
    """Whether every path is one string and every tensor a :class:`TensorInfo` with a
    storage whose numbers are ``int``s (``bool`` is no ``int`` here), checked in bulk: a
    cached text stands for equal attributes, and ``2.0 == 2``, ``True == 1``."""
    paths = [p for p, _n in pairs]
    if set(map(len, paths)) - {1} or set(map(type, map(_FIRST, paths))) - {str}:
        return False
    ts = list(map(_TENSOR, map(itemgetter(1), pairs)))
    if set(map(type, ts)) - {TensorInfo}:
        return False
    storages = list(map(_STORAGE, ts))
    if None in storages or set(map(type, map(_KEY, storages))) - {str}:
        return False
    shapes = list(map(_SHAPE, ts))
    strides = [s for s in map(_STRIDE, ts) if s is not None]
    ints = itertools.chain(itertools.chain.from_iterable(shapes),
                           itertools.chain.from_iterable(strides),
                           map(_OFFSET, ts), map(_NUMEL, storages))
    return not (set(map(type, shapes)) - {tuple} or set(map(type, strides)) - {tuple} or
                set(map(type, ints)) - {int} or set(map(type, map(_GRAD, ts))) - {bool})

