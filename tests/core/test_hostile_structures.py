"""Files built to mislead or exhaust the reader: it must show what torch would load,
stay within memory and time, and keep its verdict."""

from __future__ import annotations

import io
import json
import pickle
import struct
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from ckpt_inspector.core import CheckpointError, open_checkpoint
from ckpt_inspector.core.formats import torch_zip
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy, to_torch
from ckpt_inspector.core.tree import key_of

from support import Payload, run_cli, run_limited


def tensors(ckpt):
    return {key_of(p): n.tensor for p, n in ckpt.tensors()}


def long_put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def long_get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def test_build_on_a_tensor_is_applied_like_torch(torch, tmp_path):
    """BUILD on a rebuilt tensor is tensor.set_(...): the reader must show that tensor."""
    small, big = torch.zeros(2), torch.arange(1000.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small_storage, big_storage = small.storage(), big.storage()

    class Spoof:
        def __reduce_ex__(self, _protocol):
            return (torch._utils._rebuild_tensor_v2,
                    (small_storage, 0, (2,), (1,), False, OrderedDict()),
                    (big_storage, 0, (10, 100), (100, 1)))

    path = tmp_path / "spoof.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save({"w": Spoof()}, path)
    loaded = torch.load(path, weights_only=True)["w"]
    info = tensors(open_checkpoint(path))["w"]
    assert info.shape == tuple(loaded.shape) == (10, 100)
    assert torch.equal(to_torch(info), loaded)


def test_tensor_subclasses_keep_their_own_shapes(torch, tmp_path):
    # a subclass pickle can find by name (torch is imported by the fixture, not here)
    my_t = type("MyT", (torch.Tensor,), {"__module__": __name__})
    globals()["MyT"] = my_t
    MyT = my_t
    data = {f"t{i}": torch.randn(i + 1, 2).as_subclass(MyT) for i in range(4)}
    path = tmp_path / "sub.pt"
    torch.save(data, path)
    infos = tensors(open_checkpoint(path))
    for key, t in data.items():
        assert infos[key].shape == tuple(t.shape), key
        assert torch.equal(to_torch(infos[key]), t.as_subclass(torch.Tensor))
        assert infos[key].subclass.endswith("MyT")


def test_duplicate_ordered_dict_keys_keep_the_last_value(tmp_path):
    stream = (b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00wK\x01"
              b"X\x01\x00\x00\x00wK\x02u.")
    assert pickle.loads(stream) == OrderedDict(w=2)
    path = tmp_path / "dupkey.pkl"
    path.write_bytes(stream)
    root = open_checkpoint(path).root
    assert [(c.key, c.value) for c in root.children] == [("w", 2)]


def test_shared_list_bomb_stays_small_and_fast(tmp_path):
    """50 KB that reference one 20,000-int list a million times."""
    stream = b"\x80\x02](" + b"K\x01" * 20000 + b"e" + long_put(0)
    stream += b"](" + long_get(0) * 1000 + b"e" + long_put(1)
    stream += b"](" + long_get(1) * 1000 + b"e" + long_put(2) + b"."
    path = tmp_path / "laughs.pkl"
    path.write_bytes(stream)
    proc = run_limited("info", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    # the copies of the shared lists are held to the builder's max_repeated
    assert "same object" in json.dumps(json.loads(proc.stdout)["warnings"])


def test_one_embedded_checkpoint_used_many_times_is_read_once(torch, tmp_path):
    inner = io.BytesIO()
    torch.save({"w": torch.zeros(256 * 1024)}, inner, _use_new_zipfile_serialization=False)
    raw = inner.getvalue()
    stream = (b"\x80\x02ctorch.storage\n_load_from_bytes\nB" + struct.pack("<I", len(raw)) + raw
              + b"\x85R" + long_put(0) + b"0](" + long_get(0) * 20000 + b"e.")
    path = tmp_path / "nested.pkl"
    path.write_bytes(stream)
    proc = run_limited("scan", str(path), "--json")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "needs-trust"


def test_oversized_pickle_member_is_refused(tensors_file, monkeypatch):
    monkeypatch.setattr(torch_zip, "MAX_PICKLE_BYTES", 100)
    with pytest.raises(CheckpointError, match="more than") as info:
        open_checkpoint(tensors_file[0])
    assert info.value.partial is not None


def test_huge_integers_print_without_crashing(torch, tmp_path):
    path = tmp_path / "bigint.pt"
    torch.save({"w": torch.ones(2), "epoch": 10**5000}, path)
    for args in (["info", str(path)], ["info", str(path), "--json"], ["scan", str(path)]):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
    assert "bits" in run_cli("info", str(path)).stdout


def test_payload_before_a_malformed_object_is_still_reported(tmp_path, marker):
    command = f"touch {marker}".encode()
    system = b"cposix\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R"
    bad_array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
                 b"(K\x01X\x03\x00\x00\x00badcnumpy\ndtype\nX\x02\x00\x00\x00f8\x85R\x89C\x00tb")
    path = tmp_path / "mixed.pkl"
    path.write_bytes(b"\x80\x02(" + system + bad_array + b"l.")
    proc = run_cli("scan", str(path), "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "dangerous" and "posix.system" in report["globals"]
    assert not marker.exists()


def test_legacy_file_from_a_big_endian_host(torch, tmp_path):
    """sys_info says big-endian; torch still writes sizes and data little-endian."""
    data = {"w": torch.arange(6, dtype=torch.float32), "n": torch.tensor([7])}
    buf = io.BytesIO()
    torch.save(data, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    raw = raw.replace(b"little_endianq\x02\x88", b"little_endianq\x02\x89", 1)
    assert b"little_endianq\x02\x89" in raw
    path = tmp_path / "be_legacy.pt"
    path.write_bytes(raw)
    loaded = torch.load(path, weights_only=True)
    infos = tensors(open_checkpoint(path))
    for key, t in loaded.items():
        assert infos[key].problem is None
        assert torch.equal(to_torch(infos[key]), t)


def test_duplicate_zip_members_are_flagged_and_both_scanned(torch, tmp_path, marker):
    benign = io.BytesIO()
    torch.save({"w": torch.ones(2)}, benign)
    evil = pickle.dumps(Payload(f"touch {marker}"), protocol=2)
    path = tmp_path / "dup.pt"
    with zipfile.ZipFile(io.BytesIO(benign.getvalue())) as zin, \
            zipfile.ZipFile(path, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        for info in zin.infolist():
            if info.filename.endswith("data.pkl"):
                zout.writestr(info.filename, evil)
            zout.writestr(info, zin.read(info))
    report = scan(open_checkpoint(path))
    assert report.verdict == "dangerous"
    codes = {f.code for f in report.findings}
    assert {"duplicate-member", "dangerous-import"} <= codes
    assert not marker.exists()


def test_stored_bound_method_and_type_of_none_need_trust(torch, tmp_path):
    lazy = tmp_path / "lazy.pt"
    torch.save(torch.nn.LazyLinear(3), lazy)
    assert scan(open_checkpoint(lazy)).verdict == "needs-trust"
    typed = tmp_path / "type.pt"
    torch.save({"hp": {"dtype": type(None)}}, typed)
    assert scan(open_checkpoint(typed)).verdict == "needs-trust"


def test_getattr_on_an_imported_object_is_dangerous(tmp_path):
    """getattr(collections.OrderedDict, "__init__"): the first step of every gadget chain."""
    stream = (b"\x80\x02c__builtin__\ngetattr\nccollections\nOrderedDict\n"
              b"X\x08\x00\x00\x00__init__\x86R.")
    path = tmp_path / "getattr.pkl"
    path.write_bytes(stream)
    assert scan(open_checkpoint(path)).verdict == "dangerous"


def test_numpy_arrays_pickled_with_protocol_5(torch, tmp_path):
    arr = np.arange(12, dtype=np.float16).reshape(3, 4)
    path = tmp_path / "np5.pt"
    torch.save({"a": arr}, path, pickle_protocol=5)
    node = next(n for n in open_checkpoint(path).root.walk() if n.key == "a")
    assert node.kind == "ndarray"
    assert np.array_equal(to_numpy(node.tensor), arr)


def test_onnx_inputs_are_json_objects(onnx_inline):
    out = json.loads(run_cli("info", str(onnx_inline), "--json").stdout)
    assert out["metadata"]["inputs"][0]["name"] == "image"


@pytest.mark.parametrize("model", [
    b"\x08\x07\x30\x05",  # doc_string (a text field) written as a number: found by the fuzzer
    b"\x08\x07\x38\x05",  # the graph written as a number
    b"\x08\x07\x3a\x02\x2a\x05",  # an initializer written as a number
])
def test_onnx_fields_of_the_wrong_type(tmp_path, model):
    path = tmp_path / "bad.onnx"
    path.write_bytes(model)
    with pytest.raises(CheckpointError):
        open_checkpoint(path)


def test_zip_member_without_a_name(tmp_path):
    """Found by the fuzzer: zipfile's own is_dir() fails on an empty member name."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo(""), b"hello")
    path = tmp_path / "noname.zip"
    path.write_bytes(buf.getvalue())
    ckpt = open_checkpoint(path)
    assert ckpt.format == "archive"


def test_absurd_and_negative_tensor_geometry_is_marked_not_allocated(torch, tmp_path):
    """Shapes of 2**62 elements, negative strides, offsets past the end: listed, marked."""
    import zipfile as zf_mod

    base = tmp_path / "base.pt"
    torch.save({"big": torch.zeros(2, 3), "neg": torch.zeros(4), "off": torch.zeros(5)}, base)
    with zf_mod.ZipFile(base) as z:
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("data.pkl"))
        data = z.read(pkl)
    # rewrite the size/stride/offset tuples (BININT1 opcodes) in the stream
    data = data.replace(b"K\x02K\x03\x86", b"J\x00\x00\x00\x80J\x00\x00\x00\x80\x86", 1)
    out = tmp_path / "absurd.pt"
    with zf_mod.ZipFile(base) as zin, zf_mod.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, data if info.filename == pkl else zin.read(info))
    infos = tensors(open_checkpoint(out))
    assert "negative size" in infos["big"].problem  # -2**31 from the rewritten ints
    assert infos["neg"].problem is None


@pytest.mark.parametrize("case", ["numel", "stride", "offset"])
def test_tensor_geometry_checks(case):
    from ckpt_inspector.core.pickle.rebuild import check_tensor
    from ckpt_inspector.core.tree import StorageInfo, TensorInfo

    storage = StorageInfo("0", "float32", 10, "cpu")
    info = {"numel": TensorInfo("float32", (2**31, 2**31), (2**31, 1), 0, storage),
            "stride": TensorInfo("float32", (2, 2), (-1, 1), 0, storage),
            "offset": TensorInfo("float32", (4,), (1,), 8, storage)}[case]
    problem = check_tensor(info, info.storage_offset, storage)
    assert problem and {"numel": "absurd", "stride": "negative stride",
                        "offset": "storage holds"}[case] in problem


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path, onnx_inline):
    import onnx
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(onnx_inline))
    init = model.graph.initializer[0]
    set_external_data(init, location="../../etc/passwd", offset=0, length=16)
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "escape.onnx"
    onnx.save(model, str(path))
    info = tensors(open_checkpoint(path))[init.name]
    assert "leaves the model's folder" in info.problem
    with pytest.raises(Exception, match="leaves"):
        to_numpy(info)


@pytest.mark.parametrize("case", ["header too long", "overlap", "past the end"])
def test_broken_safetensors_are_refused(tmp_path, case):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}
    body = b"\0" * 16
    if case == "overlap":
        header["b"]["data_offsets"] = [4, 12]
    if case == "past the end":
        body = b"\0" * 12
    raw = json.dumps(header).encode()
    size = len(raw) + (1000 if case == "header too long" else 0)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", size) + raw + body)
    with pytest.raises(CheckpointError):
        open_checkpoint(path)


def test_zip_with_100000_entries_reads_in_bounded_time(torch, tmp_path):
    import time

    base = io.BytesIO()
    torch.save({"w": torch.ones(2)}, base)
    path = tmp_path / "many.pt"
    with zipfile.ZipFile(io.BytesIO(base.getvalue())) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        for i in range(100_000):
            zout.writestr(f"archive/extra/{i}", b"")
    start = time.perf_counter()
    ckpt = open_checkpoint(path)
    assert time.perf_counter() - start < 30
    assert scan(ckpt).verdict == "safe"
    assert ckpt.metadata["records"] > 100_000


def test_opcode_budget(monkeypatch):
    from ckpt_inspector.core.pickle import vm as pickle_vm

    monkeypatch.setattr(pickle_vm, "MAX_OPS", 1000)
    with pytest.raises(CheckpointError, match="opcodes"):
        pickle_vm.load(b"\x80\x04" + b"N0" * 2000 + b"N.")


@pytest.mark.parametrize("shared", ["state", "pairs"])
def test_one_large_build_state_given_to_many_builds_is_read_once(tmp_path, monkeypatch, shared):
    """Found by a red-team review: 20,000 OrderedDict() given, by BUILD, one Counter of
    200,000 references to one pair (pickle.load: 0.1 s) took the verdict 4e9 steps, a
    hang. Each state's items (or the list of pairs each of many Counters is built from)
    are now looked at once: counted here, at a tenth of that size."""
    from ckpt_inspector.core import calls

    def s(t):
        return b"X" + struct.pack("<I", len(t)) + t.encode()

    def put(i):
        return b"r" + struct.pack("<I", i)

    def get(i):
        return b"j" + struct.pack("<I", i)

    pairs, builds = 20_000, 2_000
    out = [b"\x80\x02ccollections\nOrderedDict\n", put(0), b"0", s("a"), b"N\x86", put(1),
           b"0]", put(3), b"(" + b"h\x01" * pairs + b"e0"]  # memo 3: the list of pairs
    counter = b"ccollections\nCounter\n" + get(3) + b"\x85R"
    if shared == "state":
        out += [counter, put(2), b"0]("]
        out += [get(0) + b")R" + get(2) + b"b"] * builds
    else:  # a Counter of its own for each, all of the same list
        out += [b"]("] + [get(0) + b")R" + counter + b"b"] * builds
    out.append(b"e.")
    path = tmp_path / "states.pkl"
    path.write_bytes(b"".join(out))
    assert len(pickle.loads(path.read_bytes())) == builds  # the stream pickle.load reads
    seen = [0]
    real = calls._sets_behaviour

    def counted(key, value):
        seen[0] += 1
        return real(key, value)

    monkeypatch.setattr(calls, "_sets_behaviour", counted)
    assert scan(open_checkpoint(str(path))).verdict == "safe"
    assert seen[0] <= 2 * pairs + 2 * builds, seen[0]  # was pairs * builds
