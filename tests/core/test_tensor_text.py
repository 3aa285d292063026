"""``tensors_json`` (core/tensor_text.py) writes what ``tensor_json`` writes for each tensor:
for a flat state_dict whose checks pass in bulk, and for anything else (it falls back)."""

from __future__ import annotations

import json

from _trees import state_dict
from test_summary_fast import _odd_tensors, _stored

from ckpt_inspector.core import tensor_text
from ckpt_inspector.core.summary import shared_storage, tensor_paths, tensor_record
from ckpt_inspector.core.tensor_text import tensors_json
from ckpt_inspector.core.tree import Checkpoint

# what the bulk checks refuse: a cached text stands for equal attributes, and 2.0 == 2
_NOT_BULK = {"floats", "bools", "bool-stride", "grad-int", "int-storage-key", "no-storage",
             "unknown"}


def _dumped(nodes):
    ckpt = Checkpoint("x.pt", "torch-zip", state_dict(*nodes))
    pairs = tensor_paths(ckpt)
    shared = shared_storage(ckpt, pairs)
    return pairs, tensors_json(pairs, shared), [
        json.dumps(tensor_record(p, n, shared)) for p, n in pairs]


def test_every_kind_of_tensor_falls_back_to_the_record():
    pairs, fast, slow = _dumped(_odd_tensors())
    assert not _bulk(pairs)
    assert fast == slow


def test_the_bulk_path_writes_the_records():
    nodes = [n for n in _odd_tensors() if n.key not in _NOT_BULK]
    # equal attributes under other names: one cached text, each its own key and storage key
    nodes += [_stored("plain-2"), _stored("plain-3", storage_key="data/9"),
              _stored("file-2", (3, 1), file="model-00002-of-00003.safetensors"),
              _stored("quant-2", quantization={"scheme": "per_tensor_affine", "scale": 1.0})]
    pairs, fast, slow = _dumped(nodes)
    assert _bulk(pairs)
    assert fast == slow


def test_nested_paths_fall_back():
    root = state_dict(_stored("a"))
    nested = root.add(type(root)("dict", "model", "dict"))
    nested.add(_stored("weight"))
    ckpt = Checkpoint("x.pt", "torch-zip", root)
    pairs = tensor_paths(ckpt)
    assert not _bulk(pairs)
    assert tensors_json(pairs, {}) == [json.dumps(tensor_record(p, n, {})) for p, n in pairs]


def _bulk(pairs):
    return tensor_text._plain(pairs)
