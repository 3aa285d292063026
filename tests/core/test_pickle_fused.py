"""The per-tensor run read in one step (core/pickle/fused.py) gives exactly what the opcode
loop gives: the same values with the same sharing, calls, offsets, anomalies and errors, on
torch's own streams and on thousands of damaged or doctored ones."""

from __future__ import annotations

import io
import random
import struct
import zipfile

import pytest

from ckpt_inspector.core.errors import PickleError
from ckpt_inspector.core.pickle import fused
from ckpt_inspector.core.pickle import vm as pickle_vm
from ckpt_inspector.core.pickle.values import (
    Anomaly,
    Call,
    ExtensionRef,
    GlobalRef,
    LazyBytes,
    PersistentRef,
    SafeKey,
)


def fingerprint(result, error=None):
    """Everything a reader can see of a result, sharing included (each container gets a
    number the first time it is met; a later meeting says which)."""
    ids: dict[int, int] = {}

    def walk(v, depth=0):
        if depth > 60:
            return "deep"
        t = type(v)
        if v is None or t in (bool, int, float, complex, str, bytes):
            return (t.__name__, v)
        if id(v) in ids:
            return ("same", ids[id(v)])
        tag = ids[id(v)] = len(ids)
        if t in (tuple, list):
            return (t.__name__, tag, [walk(x, depth + 1) for x in v])
        if t is dict:
            return ("dict", tag, [(walk(k, depth + 1), walk(x, depth + 1))
                                  for k, x in v.items()])
        if t in (set, frozenset):
            return (t.__name__, tag, sorted(repr(walk(x, depth + 1)) for x in v))
        if t is bytearray:
            return ("bytearray", tag, bytes(v))
        if t is Call:
            return ("call", tag, v.kind, v.offset, walk(v.func, depth + 1),
                    walk(v.args, depth + 1), walk(v.kwargs, depth + 1),
                    walk(v.state, depth + 1), walk(v.list_items, depth + 1),
                    walk(v.dict_items, depth + 1))
        if t is GlobalRef:
            return ("global", tag, walk(v.module), walk(v.name), v.offset, v.opcode,
                    v.literal, v.original)
        if t is PersistentRef:
            return ("pid", tag, v.offset, walk(v.pid, depth + 1))
        if t is SafeKey:
            return ("safekey", walk(v.value, depth + 1))
        if t in (LazyBytes, ExtensionRef):
            return (t.__name__, tag, repr(v))
        return ("other", tag, t.__name__, repr(v))

    return (
        None if error is None else (type(error).__name__, str(error)),
        walk(result.value), [walk(c) for c in result.calls], [walk(g) for g in result.globals],
        [(a.code, a.message, a.offset) for a in result.anomalies],
        sorted(result.rare_opcodes.items()), result.protocol, result.end,
    )


def interpret(data, fused_runs: bool, monkeypatch, persistent_load=None):
    with monkeypatch.context() as m:
        if not fused_runs:
            m.setattr(pickle_vm, "tensor_run", lambda *args: None)
        try:
            return fingerprint(pickle_vm.load(data, persistent_load=persistent_load))
        except PickleError as err:
            return fingerprint(err.result, err)


def _data_pkl(torch, obj, **save) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **save)
    with zipfile.ZipFile(buf) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


def _state_dict(torch, n=300):
    """Tensors of every common form: dtypes, 0- to 5-d shapes, views with offsets and
    strides, shared storages, large element counts, a second device string."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool,
              torch.uint8, torch.float64]
    shapes = [(), (3,), (2, 3), (2, 3, 4), (1, 2, 1, 3), (2, 1, 2, 1, 2), (0,), (70000,)]
    for i in range(n):
        shape = shapes[i % len(shapes)]
        sd[f"layer.{i}.w"] = torch.zeros(shape, dtype=dtypes[i % len(dtypes)])
    base = torch.randn(6, 8, generator=g)
    sd["view.t"] = base.t()
    sd["view.slice"] = base[2:, 1::2]
    sd["view.same"] = base  # shares the views' storage
    sd["tied.a"] = sd["tied.b"] = torch.ones(4)
    sd["grad"] = torch.ones(3).requires_grad_()
    sd["param"] = torch.nn.Parameter(torch.ones(2))
    sd["big"] = torch.zeros(40000, 3)[:, 1]  # a stride past BININT1 and BININT2
    sd["nested"] = {"state": {0: {"exp_avg": torch.zeros(5)}}, "lr": 0.1}
    return sd


@pytest.fixture(scope="module")
def streams(torch):
    sd = _state_dict(torch)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Conv2d(2, 3, 3))
    return {
        "state_dict": _data_pkl(torch, sd),
        # frames; SHORT_BINUNICODE and MEMOIZE instead of BINUNICODE and BINPUT, which
        # only the loop reads (torch.save writes protocol 2 unless asked)
        "protocol4": _data_pkl(torch, sd, pickle_protocol=4),
        "module_state": _data_pkl(torch, module.state_dict()),  # OrderedDict + _metadata
        "small": _data_pkl(torch, {"a": torch.zeros(2), "b": torch.zeros(3, 3)}),
    }


def test_runs_are_taken_and_agree(streams, monkeypatch):
    taken = []
    real = fused.tensor_run

    def counting(*args):
        out = real(*args)
        taken.append(out is not None)
        return out

    for name, data in streams.items():
        taken.clear()
        monkeypatch.setattr(pickle_vm, "tensor_run", counting)
        fast = fingerprint(pickle_vm.load(data))
        monkeypatch.undo()
        assert fast == interpret(data, False, monkeypatch), name
        if name == "state_dict":
            assert sum(taken) > 250, sum(taken)  # most tensors go through it


def test_persistent_load_sees_the_same_calls(streams, monkeypatch):
    """The reader's persistent_load is called with the same ids at the same offsets, and
    what it answers is placed the same way."""
    def recorder():
        seen = []

        def load(pid, at):
            seen.append((repr(pid), at))
            return ("resolved", len(seen))  # a tuple: the careful path of the run
        return seen, load

    data = streams["state_dict"]
    seen_fast, load_fast = recorder()
    seen_slow, load_slow = recorder()
    assert interpret(data, True, monkeypatch, load_fast) == \
        interpret(data, False, monkeypatch, load_slow)
    assert seen_fast == seen_slow and len(seen_fast) > 300


MUTATION_BYTES = b"qrhjKMJt()\x85\x86\x87RQX\x88\x89\x95.\x00\x01\xff0"


@pytest.mark.parametrize("seed", range(4))
def test_damaged_streams_agree(streams, monkeypatch, seed):
    """Random damage inside the tensor runs (a byte changed, inserted or removed, the
    stream cut): both ways end in the same value or the same error at the same offset."""
    rng = random.Random(seed)
    data = streams["small"] if seed % 2 else streams["state_dict"][:6000]
    if not seed % 2:  # a prefix ends inside the dict: close it so most mutants finish
        data = streams["state_dict"][:streams["state_dict"].rfind(b"R", 0, 6000) + 1]
        data += b"u."  # SETITEMS may see an odd count: an error both ways, which is fine
    for _ in range(400):
        buf = bytearray(data)
        at = rng.randrange(2, len(buf))
        kind = rng.randrange(4)
        if kind == 0:
            buf[at] = rng.choice(MUTATION_BYTES)
        elif kind == 1:
            buf.insert(at, rng.choice(MUTATION_BYTES))
        elif kind == 2:
            del buf[at]
        else:
            del buf[at:]
        mutant = bytes(buf)
        assert interpret(mutant, True, monkeypatch) == interpret(mutant, False, monkeypatch), \
            (kind, at)


def _runs(data):
    """(start, match) of every run in a stream (after a key's BINUNICODE)."""
    out = []
    pos = 0
    while (pos := data.find(b"X", pos)) >= 0:
        n = struct.unpack_from("<I", data, pos + 1)[0] if pos + 5 <= len(data) else 0
        m = fused.TENSOR_RUN.match(data, pos + 5 + n)
        if m and data[pos + 5:pos + 5 + n].isascii():
            out.append(m)
        pos += 1
    return out


def _set_index(data: bytearray, m, group: int, value: int):
    raw = m.group(group)
    start = m.start(group)
    if len(raw) == 2:
        data[start + 1] = value
    else:
        struct.pack_into("<I", data, start + 1, value)


def test_doctored_runs_agree(streams, monkeypatch):
    """Runs that read a slot the run itself writes, overwrite an old slot, or read one
    never written: the run is left to the loop, and both ways agree."""
    data = streams["small"]
    runs = _runs(data)
    assert len(runs) == 1  # the first tensor's run holds its GLOBALs: the second one
    m = runs[0]
    put_key = m.group(1)[1] if len(m.group(1)) == 2 else struct.unpack("<I", m.group(1)[1:])[0]
    cases = []
    for get_group in (2, 3, 4, 8, 17):  # a get of the key's own slot
        buf = bytearray(data)
        _set_index(buf, m, get_group, put_key)
        cases.append(bytes(buf))
    for put_group in (1, 7, 10, 13, 18, 19, 20):  # a put over slot 2 (_rebuild_tensor_v2)
        if m.group(put_group) is not None:
            buf = bytearray(data)
            _set_index(buf, m, put_group, 2)
            cases.append(bytes(buf))
    def index(group):
        raw = m.group(group)
        return raw[1] if len(raw) == 2 else struct.unpack("<I", raw[1:])[0]
    # a put over an old slot that a later get of the run reads
    for put_group, get_group in ((1, 2), (1, 8), (7, 8), (10, 17), (13, 17), (15, 17)):
        if m.group(put_group) is not None:
            buf = bytearray(data)
            _set_index(buf, m, put_group, index(get_group))
            cases.append(bytes(buf))
    buf = bytearray(data)
    _set_index(buf, m, 17, 200)  # a slot never written
    cases.append(bytes(buf))
    for case in cases:
        assert interpret(case, True, monkeypatch) == interpret(case, False, monkeypatch)


@pytest.mark.parametrize("copies", range(6, 16))
def test_nested_tuple_records_agree(monkeypatch, copies):
    """The run's arguments tuple is recorded as the loop records it: its depth (nested in
    more tuples, against the depth limit) and the items hashing it visits (as a dict key,
    against the cost limit)."""
    monkeypatch.setattr(pickle_vm, "MAX_TUPLE_DEPTH", 10)
    monkeypatch.setattr(pickle_vm, "MAX_KEY_ITEMS", 100)
    body = PAYLOAD_RUN[:-2]  # before SETITEMS, STOP
    nested = body + b"X\x01\x00\x00\x00ch\r" + b"\x85" * (copies - 5) + b"u."
    as_key = body + b"(" + b"h\r" * copies + b"tNu."
    for stream in (nested, as_key):
        assert interpret(stream, True, monkeypatch) == interpret(stream, False, monkeypatch)
    errors = [interpret(s, True, monkeypatch)[0] for s in (nested, as_key)]
    assert errors[0] is None or "nested deeper" in errors[0][1]
    assert errors[1] is None or "too costly to hash" in errors[1][1]


def test_frames_and_budgets_agree(torch, monkeypatch):
    """A frame whose end cuts a run, and opcode budgets that run out inside runs."""
    sd = {f"k{i}": torch.zeros(i % 5 + 1) for i in range(3000)}
    data = _data_pkl(torch, sd)
    runs = _runs(data)
    assert len(runs) > 2000
    for cut_in in (runs[5], runs[1000]):
        for inside in (0, 7, cut_in.end() - cut_in.start()):
            length = cut_in.start() + inside - 2
            framed = data[:2] + b"\x95" + struct.pack("<Q", length) + data[2:]
            assert interpret(framed, True, monkeypatch) == \
                interpret(framed, False, monkeypatch)
    for max_ops in (100, 4097, 4200, 5000, 50_000):
        monkeypatch.setattr(pickle_vm, "MAX_OPS", max_ops)
        assert interpret(data, True, monkeypatch) == interpret(data, False, monkeypatch)


# dict with one tensor run ("b"), its globals memoized first; the run's arguments tuple
# is slot 13 (\r), the whole call slot 14
PAYLOAD_RUN = (b"\x80\x02}q\x00"
    b"cos\nsystem\nq\x020X\x07\x00\x00\x00storageq\x030"
    b"ctorch\nFloatStorage\nq\x040X\x03\x00\x00\x00cpuq\x050"
    b"ccollections\nOrderedDict\nq\x060"
    b"(X\x01\x00\x00\x00bq\x07"
    b"h\x02((h\x03h\x04X\x01\x00\x00\x000q\x08h\x05K\x04tq\tQK\x00K\x04\x85q\n"
    b"K\x01\x85q\x0b\x89h\x06)Rq\x0ctq\rRq\x0e"
    b"u.")


def test_a_payload_in_a_run_is_still_seen(tmp_path, monkeypatch):
    """A run whose memo get names a slot holding a dangerous import: the call made in one
    step still names it, and nothing runs."""
    marker = tmp_path / "MARKER"
    stream = PAYLOAD_RUN
    assert fused.TENSOR_RUN.match(stream, stream.index(b"bq\x07") + 1)
    fast = interpret(stream, True, monkeypatch)
    assert fast == interpret(stream, False, monkeypatch)
    result = pickle_vm.load(stream)
    call = result.value["b"]
    assert isinstance(call, Call) and call.func_name == "os.system"
    assert not marker.exists()
    assert not any(isinstance(a, Anomaly) and a.code == "stack-left" for a in result.anomalies)


@pytest.mark.parametrize("error", [KeyError, IndexError, TypeError, struct.error])
def test_a_persistent_load_error_is_reported_at_binpersid(monkeypatch, error):
    """A persistent_load that raises one of the errors the loop turns into a PickleError at
    the opcode's offset: the same message at the same offset (BINPERSID's) both ways."""
    data = (b"\x80\x02Nq\x000X\x00\x00\x00\x00q\x01h\x00((h\x00h\x00X\x01\x00\x00\x000q\x02"
            b"h\x00K\x00tq\x03QK\x00))\x89h\x00)Rq\x04tq\x05Rq\x06.")
    assert fused.TENSOR_RUN.match(data, 11)

    def load(pid, at):
        raise error(pid[2])

    fast = interpret(data, True, monkeypatch, load)
    assert fast == interpret(data, False, monkeypatch, load)
    assert fast[0] is not None and "at byte 36" in fast[0][1], fast[0]


def test_a_run_of_ints_is_bounded(monkeypatch):
    """A MARK followed by many ints: the run's regex gives up after 64 (a dimension count no
    tensor has) instead of keeping state for each of millions of them; both ways agree."""
    head = (b"\x80\x02X\x00\x00\x00\x00q\x00h\x00((h\x00h\x00X\x01\x00\x00\x000q\x01h\x00"
            b"K\x00tq\x02QK\x00(")
    tail = b"t)\x89h\x00)Rq\x03tq\x04Rq\x05."
    for n, matches in ((64, True), (65, False), (200_000, False)):
        data = head + b"K\x00" * n + tail
        assert (fused.TENSOR_RUN.match(data, 7) is not None) is matches, n
        assert interpret(data, True, monkeypatch) == interpret(data, False, monkeypatch)
    digits = (b"\x80\x02X\x00\x00\x00\x00q\x00h\x00((h\x00h\x00X\x05\x00\x00\x00"
              + b"0" * 100_000 + b"q\x01.")
    assert fused.TENSOR_RUN.match(digits, 7) is None
