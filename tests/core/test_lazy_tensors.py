"""Where only a verdict is wanted (``scan``, :data:`tensors_when_read`), tensor nodes of a
safetensors header make their TensorInfo when first read: the verdict reads none, and what
is made then is what reading at once (everywhere else) makes."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from ckpt_inspector.core.formats import open_checkpoint
from ckpt_inspector.core.layouts import open_checkpoint as open_layout
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tree import LazyTensorNode, Node, peek_tensor, tensors_when_read

from support import run_cli


@pytest.fixture(autouse=True)
def when_read():
    token = tensors_when_read.set(True)
    yield
    tensors_when_read.reset(token)


@pytest.fixture
def small(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    tensors = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
               "b.bias": np.ones(5, dtype=np.float16), "c": np.zeros((), dtype=np.int64)}
    save_file(tensors, path)
    return path, tensors


def test_nodes_stay_pending_until_read(small):
    path, tensors = small
    ckpt = open_checkpoint(path)
    kids = ckpt.root.children
    assert all(type(n) is LazyTensorNode for n in kids)
    assert scan(ckpt).verdict == "safe"
    assert all(type(n) is LazyTensorNode for n in kids)  # the verdict made no TensorInfo
    by_key = {n.key: n for n in kids}
    info = by_key["a.weight"].tensor
    assert type(by_key["a.weight"]) is Node  # a plain node from now on
    assert info is by_key["a.weight"].tensor  # made once
    assert (info.dtype, info.shape, info.device, info.file) == ("float32", (3, 4), "cpu", None)
    assert info.storage.key == "a.weight" and info.storage.numel == 12
    assert bytes(info.storage.source.buffer()) == tensors["a.weight"].tobytes()
    scalar = by_key["c"].tensor
    assert scalar.shape == () and scalar.numel == 1 and scalar.dtype == "int64"
    assert by_key["b.bias"].tensor.dtype == "float16"


def test_a_shard_names_its_file_before_and_after(tmp_path):
    from safetensors.numpy import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"x": np.ones(2, np.float32)}, folder / "model-00001-of-00002.safetensors")
    save_file({"y": np.ones(3, np.float32)}, folder / "model-00002-of-00002.safetensors")
    ckpt = open_layout(str(folder))
    nodes = {n.key: n for n in ckpt.root.children}
    assert isinstance(peek_tensor(nodes["x"]), list)  # still pending after the union
    assert nodes["x"].tensor.file == "model-00001-of-00002.safetensors"
    assert nodes["y"].tensor.file == "model-00002-of-00002.safetensors"


def test_threads_reading_first_get_one_tensorinfo(small):
    path, _ = small
    for _ in range(20):
        node = open_checkpoint(path).root.children[0]
        seen: list[object] = []
        start = threading.Barrier(4)

        def read(node: Node = node, seen: list[object] = seen,
                 start: threading.Barrier = start) -> None:
            start.wait()
            seen.append(node.tensor)

        threads = [threading.Thread(target=read) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(x) for x in seen}) == 1


def _fields(ckpt):
    out = []
    for path, node in ckpt.tensors():
        t = node.tensor
        src = t.storage.source
        out.append((path, t.dtype, t.shape, t.stride, t.storage_offset, t.device, t.file,
                    t.storage.key, t.storage.dtype, t.storage.numel, t.storage.location,
                    type(src).__name__, src.offset, src.nbytes, bytes(src.buffer())))
    return out


def test_made_when_read_is_what_reading_at_once_makes(small, tmp_path):
    path, _ = small
    lazy = open_checkpoint(path)
    token = tensors_when_read.set(False)
    try:
        eager = open_checkpoint(path)
    finally:
        tensors_when_read.reset(token)
    assert all(type(n) is Node for n in eager.root.children)  # at once, by default
    assert _fields(lazy) == _fields(eager)


def test_scan_makes_none_and_info_reads_them_all(small):
    path, tensors = small
    out = run_cli("scan", str(path))
    assert out.returncode == 0 and "safe" in out.stdout
    info = json.loads(run_cli("info", "--json", str(path)).stdout)
    assert {t["key"]: t["shape"] for t in info["tensors"]} == {
        k: list(v.shape) for k, v in tensors.items()}
