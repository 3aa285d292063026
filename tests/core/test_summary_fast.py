"""The fast paths of ``info --json`` write what the plain ones do (core/summary.py):
``tensor_json`` is ``json.dumps(tensor_record(...))`` for every kind of tensor, and
``walk_paths`` / ``shared_storage`` / ``totals`` agree with the node walk."""

from __future__ import annotations

import json

import pytest
from _trees import state_dict, tensor

from ckpt_inspector.core.summary import (
    shared_storage,
    tensor_json,
    tensor_paths,
    tensor_record,
    totals,
    walk_paths,
)
from ckpt_inspector.core.tensors import BytesRange
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo


def _stored(key, shape=(2, 3), dtype="float32", storage_key=None, source=None, **extra):
    node = tensor(key, shape, dtype, **extra)
    numel = 1
    for s in shape:
        numel *= s if isinstance(s, int) else 1
    node.tensor.storage = StorageInfo(key if storage_key is None else storage_key, dtype,
                                      numel, "cpu", source or BytesRange(b"\0" * 64, 0, 8))
    return node


def _odd_tensors() -> list[Node]:
    shared = BytesRange(b"\0" * 64, 0, 24)
    nodes = [
        _stored("plain"),
        _stored("é \"quoted\"\n\\ key", (4,), "float16"),
        _stored("file", (3, 1), file="model-00002-of-00003.safetensors"),
        _stored("damaged", problem="its file is missing"),
        _stored("strided", (2, 3), stride=(1, 2), storage_offset=4),
        _stored("requires", requires_grad=True, role="parameter"),
        _stored("buffer", role="non-persistent buffer"),
        _stored("attr", role="attribute"),
        _stored("floats", (2.0, 3.0)),
        _stored("bools", (True, 2)),
        _stored("bool-stride", (2, 3), stride=(True, 1)),
        _stored("grad-int", requires_grad=1),
        _stored("int-storage-key", storage_key=7),
        _stored("other-storage-key", storage_key="data/0"),
        _stored("shared-a", source=shared),
        _stored("shared-b", source=shared),
        _stored("nan-dtype", dtype="safetensors:X\u2028"),
        _stored("scalar", ()),
        _stored("zero", (0, 5)),
        _stored("big", (2**40, 2**30)),
        _stored("device", device="cuda:1"),
        _stored("quant", quantization={"scheme": "per_tensor_affine", "scale": float("nan")}),
        _stored("subclass", subclass="torch.nn.Parameter"),
        _stored("pieces", pieces=[{"file": "a", "offsets": [0], "shape": [2]}]),
        tensor("no-storage"),
        Node("tensor", "unknown", "torch.Tensor",
             tensor=TensorInfo("unknown", (), problem="missing", file="x.safetensors")),
    ]
    sparse = _stored("sparse")
    sparse.tensor.layout = "sparse_coo"
    sparse.tensor.components = {"values": TensorInfo("float32", (3,))}
    nodes.append(sparse)
    return nodes


def test_tensor_json_is_the_record_dumped():
    root = state_dict(*_odd_tensors())
    nested = root.add(Node("dict", "model", "dict"))
    nested.add(_stored("weight"))
    nested.add(_stored(3))
    nested.add(_stored(2**70))
    ckpt = Checkpoint("x.pt", "torch-zip", root)
    pairs = tensor_paths(ckpt)
    assert [n for _p, n in pairs] == [n for _p, n in ckpt.tensors()]
    assert [p for p, _n in pairs] == [p for p, _n in ckpt.tensors()]
    shared = shared_storage(ckpt, pairs)
    assert sorted(map(sorted, shared.values())) == [["shared-a", "shared-b"]]
    for path, node in pairs:
        assert tensor_json(path, node, shared) == json.dumps(tensor_record(path, node, shared))


def test_walk_paths_follows_walk():
    root = state_dict(_stored("a"), Node("list", "b", "list"))
    root.children[1].add(_stored(0))
    assert [n for _p, n in walk_paths(root)] == list(root.walk())
    assert [p for _p, n in walk_paths(root) for p in [n.path()]] == \
        [p for p, _n in walk_paths(root)]


@pytest.mark.parametrize("layout", ["strided", "sparse_coo"])
def test_totals_count_each_storage_once(layout):
    source = BytesRange(b"\0" * 64, 0, 24)
    a, b = _stored("a", source=source), _stored("b", source=source)
    a.tensor.layout = layout
    t = totals(Checkpoint("x.pt", "torch-zip", state_dict(a, b)))
    assert t["tensors"] == 2 and t["storage_nbytes"] == 24 and t["numel"] == 12


def test_totals_past_a_slice_count_each_storage_once(monkeypatch):
    """More tensors than a slice (the ids sorted by numpy, sums taken a slice at a time):
    the same totals as the small path, shared storages once."""
    from ckpt_inspector.core import summary

    sources = [BytesRange(b"\0" * 64, 0, 8 + i % 5) for i in range(40)]
    nodes = [_stored(f"k{i}", source=sources[i % 40], dtype=("float32", "bfloat16")[i % 2])
             for i in range(3000)]
    small = totals(Checkpoint("x.pt", "torch-zip", state_dict(*nodes)))
    monkeypatch.setattr(summary, "SLICE", 64)
    sliced = totals(Checkpoint("x.pt", "torch-zip", state_dict(*nodes)))
    assert sliced == small
    assert small["storage_nbytes"] == sum(8 + i % 5 for i in range(40))
    assert small["by_dtype"]["bfloat16"]["tensors"] == 1500
