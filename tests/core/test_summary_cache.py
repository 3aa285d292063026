"""``info --json``'s shared-text cache and one-pass totals write what the plain paths do
(core/summary.py): the same text for tensors whose dimensions compare equal but are not
ints (``2.0 == 2``, ``True == 1``), and totals equal to a node-by-node count."""

from __future__ import annotations

import json
import math

from _trees import state_dict
from test_summary_fast import _odd_tensors, _stored

from ckpt_inspector.core.decoded import PackedTensorInfo
from ckpt_inspector.core.summary import (
    shared_storage,
    tensor_json,
    tensor_record,
    totals,
    walk_paths,
    with_tensor,
)
from ckpt_inspector.core.tree import Checkpoint, Node


def _tree() -> Node:
    nodes = [_stored("a", (2, 3)), _stored("b", (2.0, 3.0)), _stored("c", (True, 3)),
             _stored("d", (1, 3)), _stored("e", (2, 3)), *_odd_tensors()]
    root = state_dict(*nodes)
    nested = root.add(Node("dict", "model", "dict"))
    nested.add(_stored("weight", (2, 3)))
    nested.add(Node("ndarray", "arr", "numpy.ndarray", tensor=_stored("x").tensor))
    packed = _stored("q", (4, 32), "float4_e2m1fn_x2")
    packed.tensor = PackedTensorInfo("float4_e2m1fn_x2", (4, 32), storage=packed.tensor.storage)
    root.add(packed)
    return root


def test_cached_text_is_the_record_dumped():
    ckpt = Checkpoint("x.pt", "torch-zip", _tree())
    pairs = with_tensor(ckpt.root)
    assert pairs == [(p, n) for p, n in walk_paths(ckpt.root) if n.tensor is not None]
    shared = shared_storage(ckpt, [(p, n) for p, n in pairs if n.kind == "tensor"])
    cache: dict = {}
    for _ in range(2):  # the second time, every common tensor comes from the cache
        for path, node in pairs:
            assert tensor_json(path, node, shared, cache) == \
                json.dumps(tensor_record(path, node, shared)), path
    assert cache


def test_totals_match_a_node_by_node_count():
    ckpt = Checkpoint("x.pt", "torch-zip", _tree())
    nodes = [n for n in ckpt.root.walk() if n.kind == "tensor"]
    t = totals(ckpt)
    assert t == totals(ckpt, nodes)
    assert t["tensors"] == len(nodes)
    assert t["numel"] == sum(n.tensor.numel for n in nodes)
    assert t["nbytes"] == sum(n.tensor.nbytes for n in nodes)
    for dtype, d in t["by_dtype"].items():
        mine = [n.tensor for n in nodes if n.tensor.dtype == dtype]
        assert d == {"tensors": len(mine), "numel": sum(x.numel for x in mine),
                     "nbytes": sum(x.nbytes for x in mine)}
    # plain int tensors only: the path without a step per tensor
    plain = Checkpoint("y.pt", "torch-zip", state_dict(_stored("a", (2, 3)),
                                                       _stored("b", (4,), "float16")))
    assert totals(plain)["by_dtype"] == {
        "float32": {"tensors": 1, "numel": 6, "nbytes": 24},
        "float16": {"tensors": 1, "numel": 4, "nbytes": 8}}
    assert totals(plain)["numel"] == math.prod((2, 3)) + 4
