"""Pickles built to take minutes or gigabytes: each is read within its bounds, and a
payload read before the costly part still makes the file dangerous."""

from __future__ import annotations

import json
import struct
import time

import pytest

from ckpt_inspector.core.errors import PickleError
from ckpt_inspector.core.pickle import vm as pickle_vm

from hostile_calls import MARK, call, g, s, t
from support import run_cli, run_limited, scan_file


def payload(marker) -> bytes:
    """os.system('touch MARKER'), left on the stack under what follows."""
    return call(g("os", "system"), s(f"touch {marker}"))


def long_put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def long_get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def big_tuple(n: int) -> bytes:
    return MARK + b"K\x01" * n + b"t"


def verdict(path):
    _ckpt, report, error = scan_file(path)
    return report, error


def test_one_huge_key_used_66000_times_is_hashed_once(tmp_path):
    marker = tmp_path / "MARKER"
    key = big_tuple(200_000) + long_put(0)
    body = b"}" + MARK + (long_get(0) + b"K\x00") * 66_000 + b"u"
    path = tmp_path / "rehash.pkl"
    path.write_bytes(b"\x80\x04" + payload(marker) + b"0" + key + b"0" + body + b".")
    start = time.perf_counter()
    report, error = verdict(path)
    assert time.perf_counter() - start < 20
    assert error is None
    assert report.verdict == "dangerous"
    assert not marker.exists()


def test_many_distinct_costly_keys_hit_the_deadline_with_the_payload_kept(tmp_path,
                                                                        monkeypatch):
    monkeypatch.setattr(pickle_vm, "MAX_SECONDS", 1.0)
    marker = tmp_path / "MARKER"
    big = big_tuple(100_000) + long_put(0) + b"0"
    keys = b"".join(long_get(0) + b"J" + struct.pack("<i", i) + b"\x86" + b"K\x00"
                    for i in range(66_000))
    data = (b"\x80\x04" + payload(marker) + long_put(1) + b"0" + big + b"}" + MARK + keys
            + b"u0" + long_get(1) + b".")
    with pytest.raises(PickleError, match=r"took more than|too costly") as err:
        pickle_vm.load(data)
    assert any(g.full_name == "os.system" for g in err.value.result.globals)


def test_a_key_too_big_to_print_does_not_hide_the_payload(tmp_path):
    """A dict key holding a 10,000-byte integer: repr() of it fails past Python's digit
    limit; the key is hashed by its bytes and the payload before it is reported."""
    marker = tmp_path / "MARKER"
    huge = b"\x8b" + struct.pack("<i", 10_000) + b"\x7f" * 10_000
    body = b"}" + t(huge, s("x")) + b"K\x01s"
    path = tmp_path / "bigkey.pkl"
    path.write_bytes(b"\x80\x04" + payload(marker) + b"0" + body + b".")
    report, _error = verdict(path)
    assert report.verdict == "dangerous"
    proc = run_cli("scan", str(path))
    assert proc.returncode == 1, proc.stderr
    assert not marker.exists()


def test_memoized_nested_calls_are_evaluated_once(tmp_path):
    """Names for STACK_GLOBAL built from calls that reuse one call a thousand times at
    each of four levels: evaluating every path would take forever."""
    level = call(g("_codecs", "decode"), s("bf"), s("rot13")) + long_put(0)
    for i in range(1, 5):
        level += g("builtins", "str") + MARK + long_get(i - 1) * 1000 + b"tR" + long_put(i)
    data = b"\x80\x04" + level + b"0" + long_get(4) + long_get(4) + b"\x93" + b"."
    path = tmp_path / "nested.pkl"
    path.write_bytes(data)
    start = time.perf_counter()
    report, _ = verdict(path)
    assert time.perf_counter() - start < 10
    assert report.verdict == "dangerous"


def test_megabyte_integer_shapes_are_refused_per_tensor_quickly(torch, tmp_path):
    """A 1 MB integer as the size of 2,000 tensors: no multiplication of it per tensor."""
    import io
    import zipfile

    buf = io.BytesIO()
    torch.save({"a": torch.zeros(1)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        records = {i.filename: z.read(i) for i in z.infolist()}
    huge = b"\x8b" + struct.pack("<i", 1 << 20) + b"\x01" * (1 << 20)
    storage = (b"(" + s("storage") + g("torch", "FloatStorage") + s("0") + s("cpu")
               + b"K\x01tQ" + long_put(1))
    pickle = (b"\x80\x02" + huge + long_put(0) + b"0" + storage + b"0" + b"}" + b"(")
    for i in range(2000):
        pickle += s(f"t{i}") + call(g("torch._utils", "_rebuild_tensor_v2"), long_get(1),
                                    b"K\x00", t(long_get(0)), t(b"K\x01"), b"\x89",
                                    g("collections", "OrderedDict") + b")R")
    pickle += b"u."
    out = tmp_path / "huge_shape.pt"
    with zipfile.ZipFile(out, "w") as z:
        for name, data in records.items():
            z.writestr(name, pickle if name.endswith("data.pkl") else data)
    proc = run_limited("info", "--json", str(out), timeout=60)
    assert proc.returncode == 0, proc.stderr
    tensors = json.loads(proc.stdout)["tensors"]
    assert len(tensors) == 2000 and all("problem" in x for x in tensors)


def test_tensors_sharing_one_storage_list_their_sharers_in_linear_time(torch, tmp_path):
    big = torch.zeros(5_000)
    path = tmp_path / "shared.pt"
    torch.save({str(i): big[i:i + 1] for i in range(5_000)}, path)
    proc = run_limited("info", "--json", str(path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    tensors = json.loads(proc.stdout)["tensors"]
    assert len(tensors) == 5_000
    assert all(len(x["shares_storage_with"]) == 20 for x in tensors)


def _dag(depth: int) -> list:
    """``a = [a, a]`` nested ``depth`` times: 2**depth paths in a pickle of a few hundred
    bytes (pickle's memo writes each list once)."""
    a: list = [0]
    for _ in range(depth):
        a = [a, a]
    return a


def test_shared_references_nested_30_deep_build_a_tree_linear_in_the_file(tmp_path):
    import pickle

    from ckpt_inspector.core import open_checkpoint
    from ckpt_inspector.core.pickle.rebuild import TreeBuilder

    data = pickle.dumps({"client": _dag(30)}, protocol=2)
    assert len(data) < 2_000
    builder = TreeBuilder()
    root = builder.build(pickle_vm.load(data).value)
    # 2**31 nodes if every use were expanded; the copies are held to max_repeated
    assert builder.count < builder.max_repeated + 1_000
    assert builder.repeated <= builder.max_repeated
    assert any("same object" in w for w in builder.warnings)
    nodes = list(root.walk())
    assert len(nodes) <= builder.count
    refs = [n for n in nodes if n.kind == "ref"]
    assert refs and all(n.value.startswith("(same object as client.") for n in refs)

    path = tmp_path / "dag30.pkl"
    path.write_bytes(data)
    ckpt = open_checkpoint(str(path))
    assert sum(1 for _ in ckpt.root.walk()) < builder.max_repeated + 1_000
    assert any("same object" in w for w in ckpt.warnings)


def test_an_object_used_in_a_few_places_is_still_shown_in_full_in_each(tmp_path):
    import pickle

    from ckpt_inspector.core.pickle.rebuild import TreeBuilder

    shared = {"lr": 0.1, "betas": [0.9, 0.999], "nested": [[1, "a"], {"k": None}]}
    dag = _dag(6)
    builder = TreeBuilder()
    root = builder.build(pickle_vm.load(pickle.dumps(
        {"a": shared, "b": shared, "dag": dag}, protocol=4)).value)
    assert not builder.warnings
    a, b, d = root.children
    assert sum(1 for _ in a.walk()) == sum(1 for _ in b.walk()) == 7
    assert sum(1 for _ in d.walk()) == 2 ** 7 - 1  # every use expanded
    assert not [n for n in root.walk() if n.kind == "ref"]
