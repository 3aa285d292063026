"""The non-executing interpreter: pickle's values for plain data, clear errors on hostile input."""

from __future__ import annotations

import argparse
import pickle
import struct
import time

import pytest

from ckpt_inspector.core.errors import PickleError
from ckpt_inspector.core.pickle import vm as pickle_vm
from ckpt_inspector.core.pickle.values import Call, GlobalRef, LazyBytes

SHARED = [1, 2]
PLAIN = {
    "int": 7, "neg": -5, "big": 2**100, "neg_big": -(2**70), "float": 0.03125, "nan_free": 1e300,
    "str": "héllo", "empty": "", "bytes": b"\x00\xffabc", "none": None, "t": True, "f": False,
    "tuple": (1, (2, (3,))), "list": [1, [2, [3]]], "set": {1, 2, 3}, "frozen": frozenset({4}),
    "bytearray": bytearray(b"xyz"), "shared": (SHARED, SHARED), "nested": {"a": {"b": {"c": []}}},
    "complex_keys": {(1, 2): "tuple key", 3: "int key"}, "long_list": list(range(300)),
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_values_match_pickle(protocol):
    data = pickle.dumps(PLAIN, protocol=protocol)
    result = pickle_vm.load(data)
    expected = pickle.loads(data)
    value = result.value
    # older protocols write these as calls (_codecs.encode, builtins.set, ...):
    # the VM records the calls instead of making them
    as_calls = {"bytearray"} if protocol < 5 else set()
    if protocol < 4:
        as_calls |= {"set", "frozen"}
    if protocol < 3:
        as_calls |= {"bytes"}
    for key in as_calls:
        assert isinstance(value.pop(key), Call), key
        expected.pop(key)
    assert value == expected
    assert result.end == len(data)
    assert value["shared"][0] is value["shared"][1]  # memo keeps identity


def test_globals_are_recorded_never_imported():
    data = pickle.dumps(pickle.Unpickler, protocol=4)  # a reference to a class
    result = pickle_vm.load(data)
    assert isinstance(result.value, GlobalRef)
    assert result.value.full_name == "_pickle.Unpickler"
    assert [g.full_name for g in result.globals] == ["_pickle.Unpickler"]


def test_python2_names_are_mapped():
    data = b"c__builtin__\nset\n(]tR."
    result = pickle_vm.load(data)
    ref = result.globals[0]
    assert ref.full_name == "builtins.set" and ref.original == ("__builtin__", "set")


def test_reduce_newobj_build_are_inert():
    data = pickle.dumps(argparse.Namespace(a=1), protocol=2)
    result = pickle_vm.load(data)
    call = result.value
    assert isinstance(call, Call) and call.kind == "newobj"
    assert call.func.full_name == "argparse.Namespace"
    assert call.state == {"a": 1}


def test_trailing_bytes_are_left_for_the_caller():
    data = pickle.dumps(1) + b"extra"
    result = pickle_vm.load(data)
    assert result.end == len(data) - 5


def test_lazy_bytes_are_not_copied():
    payload = bytes(range(256)) * 1024
    data = pickle.dumps(payload, protocol=4)
    value = pickle_vm.load(data).value
    assert isinstance(value, LazyBytes)
    assert value.tobytes() == payload


def _nested(opcode: bytes, closing: bytes, depth: int) -> bytes:
    return b"\x80\x04" + opcode * depth + closing * (depth - 1) + b"."


HOSTILE = {
    "empty": b"",
    "no STOP": b"\x80\x04K\x01",
    "truncated BINUNICODE": b"\x80\x04X\xff\x00\x00\x00abc",
    "huge BINUNICODE8": b"\x80\x04\x8d" + struct.pack("<Q", 1 << 60) + b"x.",
    "huge BINBYTES8": b"\x80\x04\x8e" + struct.pack("<Q", 1 << 62) + b"x.",
    "huge LONG4": b"\x80\x04\x8b" + struct.pack("<i", 1 << 30) + b".",
    "negative LONG4": b"\x80\x04\x8b" + struct.pack("<i", -5) + b".",
    "unknown opcode": b"\x80\x04\xff.",
    "protocol 99": b"\x80\x63N.",
    "stack underflow": b"\x80\x04R.",
    "memo miss": b"\x80\x04h\x05.",
    "no MARK": b"\x80\x04t.",
    "frame longer than data": b"\x80\x04\x95" + struct.pack("<Q", 1 << 40) + b"N.",
    "out-of-band buffer": b"\x80\x05\x97.",
    "unhashable key": b"\x80\x04}]K\x01s.",
    "APPEND to int": b"\x80\x04K\x01K\x02a.",
    "SETITEM on str": b"\x80\x04\x8c\x01aK\x01K\x02s.",
    "REDUCE non-tuple": b"\x80\x04N]R.",
    "deep tuples": _nested(b"(", b"t", 200_000),
    "deep TUPLE1": b"\x80\x04N" + b"\x85" * 200_000 + b".",
    "text int garbage": b"I12abc\n.",
    "long digits": b"L" + b"9" * 100_000 + b"\n.",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_streams_fail_cleanly_and_fast(name):
    start = time.perf_counter()
    with pytest.raises(PickleError) as info:
        pickle_vm.load(HOSTILE[name])
    assert time.perf_counter() - start < 5
    assert str(info.value)
    assert info.value.result is not None  # what was read so far, for the scanner


def test_deep_lists_do_not_crash_the_interpreter():
    # lists are not hashed, so they may nest: the VM must not recurse on them
    data = _nested(b"]", b"a", 200_000)
    result = pickle_vm.load(data)
    assert isinstance(result.value, list)


def test_anomalies_are_recorded():
    data = b"\x80\x04\x8c\x02os\x8c\x06system\x93}b."  # BUILD on a global
    result = pickle_vm.load(data)
    assert [a.code for a in result.anomalies] == ["build-on-global"]
    ext = pickle_vm.load(b"\x80\x02\x82\x01.")
    assert [a.code for a in ext.anomalies] == ["extension-import"]
