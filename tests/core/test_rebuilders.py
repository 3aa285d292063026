"""The rebuild table: torch's and numpy's functions by name, one handler each."""

from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest

from ckpt_inspector.core.pickle import vm as pickle_vm
from ckpt_inspector.core.pickle.rebuild import TreeBuilder
from ckpt_inspector.core.pickle.rebuilders import (
    TENSORS,
    VALUES,
    tensor_rebuilder,
    value_rebuilder,
)


def _tree(value, protocol=2):
    return TreeBuilder().build(pickle_vm.load(pickle.dumps(value, protocol=protocol)).value)


def test_torch_rebuilders_are_registered_by_their_full_names():
    assert all(name.startswith(("torch._utils._rebuild_", "torch._tensor._rebuild_"))
               for name in TENSORS)
    for name in ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                 "torch._utils._rebuild_qtensor", "torch._tensor._rebuild_from_type_v2"):
        assert tensor_rebuilder(name) is TENSORS[name]


def test_torch_rebuilders_are_found_in_either_module_torch_defines_them_in():
    assert tensor_rebuilder("torch._tensor._rebuild_tensor_v2") is TENSORS[
        "torch._utils._rebuild_tensor_v2"]
    assert tensor_rebuilder("torch._utils._rebuild_from_type_v2") is TENSORS[
        "torch._tensor._rebuild_from_type_v2"]
    assert tensor_rebuilder("torch._utils.not_a_rebuild") is None
    assert tensor_rebuilder("evil._rebuild_tensor_v2") is None


@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_numpy_rebuilders_for_both_numpy_spellings(module):
    assert value_rebuilder(f"{module}.scalar") is VALUES["numpy.core.multiarray.scalar"]
    assert value_rebuilder(f"{module}._reconstruct") is VALUES[
        "numpy.core.multiarray._reconstruct"]
    assert value_rebuilder(f"{module}.dtype") is None


def test_unknown_names_have_no_handler():
    assert value_rebuilder("os.system") is None
    assert value_rebuilder("") is None


def test_containers_scalars_and_arrays_are_rebuilt_from_the_table():
    root = _tree({"od": collections.OrderedDict(a=1, b=2), "s": {1, 2}, "c": complex(1, 2),
                  "f": np.float32(1.5), "arr": np.arange(6, dtype=np.int16).reshape(2, 3)})
    kids = {c.key: c for c in root.children}
    assert kids["od"].kind == "dict" and [c.key for c in kids["od"].children] == ["a", "b"]
    assert kids["s"].kind == "set"
    assert kids["c"].kind == "scalar" and kids["c"].value == complex(1, 2)
    assert kids["f"].kind == "scalar" and kids["f"].value == 1.5
    assert kids["arr"].kind == "ndarray" and kids["arr"].tensor.shape == (2, 3)
    assert kids["arr"].tensor.dtype == "int16"
