"""Ways around the joblib and compressed-file readers found by a red-team review, each with
the loader that runs it (an oracle below proves every payload runs there). Each was "safe",
"needs-trust" without naming the call, or "not recognised"; each is now dangerous."""

from __future__ import annotations

import bz2
import lzma
import subprocess
import sys
import zlib

import pytest

from support import scan_file

pytest.importorskip("joblib")


def S(s: str) -> bytes:  # SHORT_BINUNICODE
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def _cmd(marker) -> bytes:
    return b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


def _state(shape_ops: bytes, code: str, flags: int, extra: bytes = b"") -> bytes:
    return (b"}(" + S("subclass") + b"cnumpy\nndarray\n" + S("shape") + shape_ops
            + S("order") + S("C") + S("dtype") + b"cnumpy\ndtype\n" + S(code)
            + b"\x89\x88\x87R(K\x03" + S("|" if code[0] in "OV" else "<")
            + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK" + bytes([flags]) + b"tb"
            + S("allow_mmap") + b"\x89" + extra + b"ub")


WRAPPER = b"cjoblib.numpy_pickle\nNumpyArrayWrapper\n"


def bz2_and_pickle(marker) -> tuple[bytes, str]:
    """"BZh" starts BINBYTES: a pickle of one bytes literal to pickle.load, a bz2 file (an
    empty stream, then the payload's) to joblib.load and bz2.open (sparse: ~390 MB)."""
    head = b"BZh1\x17rE8P\x90\x00\x00\x00\x00" + bz2.compress(_cmd(marker))
    n = int.from_bytes(head[1:5], "little")
    return head + b"\0" * 0 + b"SPARSE" + (1 + 4 + n).to_bytes(8, "little"), "joblib"


def outer_memo(marker) -> tuple[bytes, str]:
    """An object array's pickle read with the outer memo by pickle.load: os.system there,
    collections.OrderedDict to joblib's fresh memo."""
    outer = b"\x80\x04" + S("os") + b"q\x000" + S("system") + b"q\x010"
    inner = (b"\x80\x04" + S("collections") + b"\x94" + S("OrderedDict") + b"\x94" + b"00"
             + b"h\x00h\x01\x93" + S(f"touch {marker}") + b"\x85R.")
    return (outer + WRAPPER + b")\x81" + _state(b"K\x01\x85", "O8", 0x3F) + inner + b".",
            "pickle")


def computed_key(marker) -> tuple[bytes, str]:
    """str('shape') is the same dict key as 'shape' to Python: joblib takes 4 items."""
    body = b"\x00" * (8 * 4 - 8 - 5) + _cmd(marker)
    a = b"B" + (3 + 5 + len(body)).to_bytes(4, "little") + b"\x00\x00\x00"
    b = b"B" + len(body).to_bytes(4, "little")
    key = b"cbuiltins\nstr\n" + S("shape") + b"\x85R" + b"K\x04\x85"
    return (b"\x80\x04" + WRAPPER + b")\x81" + _state(b"K\x01\x85", "f8", 0, key)
            + a + b + body + b"0.", "joblib")


def object_flags_off(marker) -> tuple[bytes, str]:
    """An 'O8' dtype whose pickled flags are 0 holds no objects to numpy: joblib reads no
    bytes and goes on with the outer memo."""
    w1 = WRAPPER + b"q\x00)\x81" + _state(b"K\x00\x85", "O8", 0)
    outer = b"\x80\x04" + S("collections") + b"q\x010" + S("OrderedDict") + b"q\x020"
    r = b"ccollections\nOrderedDict\n\x940" + S("os") + b"q\x010" + S("system") + b"q\x020"
    r += b"h\x00)\x81" + _state(b"K\x01\x85", "f8", 0)
    x = b"0" + b"N0" * 2 + b"K\x00" + b"."
    y = b"0h\x01h\x02\x93" + S(f"touch {marker}") + b"\x85R."
    return outer + w1 + r + x + y, "joblib"


def float_flags_on(marker) -> tuple[bytes, str]:
    """An 'f8' dtype whose pickled flags say objects: joblib runs its bytes as a pickle;
    hidden from pickle.load's reading by a frame longer than the file."""
    body = _cmd(marker)
    n = (9 + len(body) + 7) // 8 + 1
    body += b"\x00" * (8 * n - 9 - len(body))
    region = b"\x95" + (len(body) + 4096).to_bytes(8, "little") + body
    wrapper = (b"\x80\x02" + WRAPPER + b")\x81" + _state(
        b"J" + (len(region) // 8).to_bytes(4, "little") + b"\x85", "f8", 1))
    return wrapper + region + b".", "joblib"


def long_frame(marker) -> tuple[bytes, str]:
    """A frame longer than the file: Python's own unpickler (joblib.load's) reads on."""
    body = _cmd(marker)
    return b"\x80\x04\x95" + (len(body) + 1000).to_bytes(8, "little") + body, "joblib"


def hex_int(marker) -> tuple[bytes, str]:
    """INT's text is read with base 0 by both unpicklers: I0x1 is 1."""
    return b"\x80\x02}q\x00I0x1\n0" + _cmd(marker), "pickle"


def gzip_bomb(marker) -> tuple[bytes, str]:
    """The payload, then 300 MiB of zeros: past what is unpacked, the start is read."""
    pack = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = pack.compress(_cmd(marker))
    zeros = b"\0" * (1 << 20)
    for _ in range(300):
        out += pack.compress(zeros)
    return out + pack.flush(), "gzip"


def lzma_empty_first(marker) -> tuple[bytes, str]:
    """An empty LZMA stream first: joblib and lzma.open read on into the next."""
    return (lzma.compress(b"", format=lzma.FORMAT_ALONE)
            + lzma.compress(_cmd(marker), format=lzma.FORMAT_ALONE), "joblib")


def _i1() -> bytes:
    return b"cnumpy\ndtype\n" + S("i1") + b"\x89\x88\x87R(K\x03" + S("|") + \
        b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"


def called_with_alignment(marker) -> tuple[bytes, str]:
    """The wrapper's class called with numpy_array_alignment_bytes=16 (its __init__ sets
    what the BUILD state leaves out): joblib reads a padding byte and skips that many."""
    n = 8
    out = b"\x80\x02" + WRAPPER + b"(NK\x08\x85" + S("C") + _i1() + b"\x89K\x10tR"
    out += b"}(" + S("shape") + b"K\x08\x85" + S("order") + S("C") + S("dtype") + _i1()
    out += b"ub"
    payload = _cmd(marker)[:-1]  # no STOP: the stream goes on
    region = bytes([4]) + b"\0" * (n - 1) + b"B" + len(payload).to_bytes(4, "little")
    return out + region + payload + b"00N.", "joblib"


def other_class_given_the_wrapper(marker) -> tuple[bytes, str]:
    """Namespace.__new__(Namespace, NumpyArrayWrapper) makes a Namespace: joblib runs the
    bytes after it, which a frame longer than the data hides from pickle.load."""
    payload = b"\x95" + (4096).to_bytes(8, "little") + _cmd(marker)[:-1] + b"0"
    out = b"\x80\x02cargparse\nNamespace\n" + WRAPPER + b"\x85\x81"
    out += b"}(" + S("shape") + b"K" + bytes([len(payload)]) + b"\x85" + S("order") + S("C")
    out += S("dtype") + _i1() + b"ub"
    return out + payload + b"0N.", "joblib"


def z_file_with_a_new_wrapper(marker) -> tuple[bytes, str]:
    """joblib's compat unpickler (for "ZF" files) takes no NumpyArrayWrapper for an array:
    the bytes after one are opcodes to it."""
    payload = b"\x95" + (1 << 40).to_bytes(8, "little") + _cmd(marker)[:-1] + b"0"
    inner = (b"\x80\x04" + WRAPPER + b")\x81" + b"}(" + S("shape") + b"K"
             + bytes([len(payload)]) + b"\x85" + S("order") + S("C") + S("dtype") + _i1()
             + b"ub" + payload + b"N.")
    return (b"ZF" + hex(len(inner)).encode().ljust(19) + zlib.compress(inner)), "joblib"


def _u1_state(extra: bytes = b"") -> bytes:
    return (S("subclass") + b"cnumpy\nndarray\n" + S("shape") + b"K\x01\x85" + S("order")
            + S("C") + S("dtype") + b"cnumpy\ndtype\n" + S("u1") + b"\x89\x88\x87R(K\x03"
            + S("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb" + S("allow_mmap")
            + b"\x89" + extra)


def state_changed_after_build(marker) -> tuple[bytes, str]:
    """A wrapper built twice: BUILD copies its state dict in when it runs, so changing the
    dict afterwards (SETITEM on its memo) does not change what joblib reads the second
    time."""
    payload = _cmd(marker)[:-1] + b"0"
    return (b"\x80\x02" + WRAPPER + b")\x81q\x02}q\x03(" + _u1_state() + b"ub" + b"."
            + b"0h\x03" + S("shape") + b"K" + bytes([1 + len(payload)]) + b"\x85s0"
            + b"h\x02}b" + b"\x00" + payload + b"."), "joblib"


def attribute_hides_a_method(marker) -> tuple[bytes, str]:
    """An instance attribute hides the wrapper's method (OrderedDict() is not None):
    joblib reads a padding byte the state does not announce."""
    payload = _cmd(marker)[:-1]
    hidden = S("safe_get_numpy_array_alignment_bytes") + b"ccollections\nOrderedDict\n"
    ops = b"B" + (1 + len(payload)).to_bytes(4, "little")
    return (b"\x80\x02" + WRAPPER + b")\x81}(" + _u1_state(hidden) + b"ub"
            + bytes([len(ops)]) + ops + b"\x00" + payload + b"0."), "joblib"


CASES = {f.__name__: f for f in (state_changed_after_build, attribute_hides_a_method,
                                 bz2_and_pickle, outer_memo, computed_key, object_flags_off,
                                 float_flags_on, long_frame, hex_int, gzip_bomb,
                                 lzma_empty_first, called_with_alignment,
                                 other_class_given_the_wrapper, z_file_with_a_new_wrapper)}
CRAFTED = ("computed_key", "object_flags_off", "float_flags_on", "called_with_alignment",
           "other_class_given_the_wrapper", "attribute_hides_a_method")


def _write(path, data: bytes) -> None:
    if b"SPARSE" in data[-14:]:  # the rest a hole, then STOP at the offset given
        data, at = data[:-14], int.from_bytes(data[-8:], "little")
        with open(path, "wb") as f:
            f.write(data)
            f.seek(at)
            f.write(b".")
        return
    path.write_bytes(data)


@pytest.mark.parametrize("name", CASES)
def test_each_is_dangerous_and_names_the_call(tmp_path, marker, name):
    data, _ = CASES[name](marker)
    path = tmp_path / f"{name}.joblib"
    _write(path, data)
    _, report, _ = scan_file(path)
    assert report.verdict == "dangerous", (name, report.findings)
    if name not in CRAFTED:
        assert "posix.system" in report.flagged_names() or "os.system" in \
            report.flagged_names(), (name, report.flagged_names())


LOADERS = {
    "joblib": "import joblib, sys\njoblib.load(sys.argv[1])",
    "pickle": "import pickle, sys\npickle.load(open(sys.argv[1], 'rb'))",
    "gzip": "import gzip, pickle, sys\npickle.load(gzip.open(sys.argv[1]))",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_the_loader_runs_each(tmp_path, name):
    ran = tmp_path / "ran"
    data, loader = CASES[name](ran)
    path = tmp_path / f"{name}.joblib"
    _write(path, data)
    subprocess.run([sys.executable, "-c", LOADERS[loader], str(path)], capture_output=True,
                   timeout=120, cwd=tmp_path)
    assert ran.exists(), name


def test_a_bz2_member_of_an_archive_is_unpacked(tmp_path, marker):
    """Every bz2 stream starts like a pickle ("BZh9": BINBYTES): members were never
    unpacked, and an archive holding a payload this way was "safe"."""
    import io
    import pickle
    import tarfile

    from support import Payload

    evil = bz2.compress(pickle.dumps(Payload(f"touch {marker}")))
    plain = bz2.compress(pickle.dumps({"a": [1, 2]}))
    for name, data, want in (("evil.tar", evil, "dangerous"), ("ok.tar", plain, "safe")):
        path = tmp_path / name
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo("model.pkl.bz2")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        _, report, _ = scan_file(path)
        assert report.verdict == want, (name, report.findings)


def test_a_large_compressed_file_past_the_cap_is_not_called_dangerous(tmp_path):
    """Cut at the 256 MiB this reader unpacks, a good joblib file breaks there for this
    reader only: needs-trust (not read whole), not dangerous."""
    import joblib
    import numpy as np

    path = tmp_path / "big.joblib.gz"
    joblib.dump({"w": np.zeros(300 << 20, np.uint8)}, path, compress=("gzip", 1))
    _, report, _ = scan_file(path)
    assert report.verdict == "needs-trust", report.findings
    assert any(f.code == "unscanned-member" for f in report.findings)


def test_companion_files_are_read_once_however_spelt(tmp_path):
    """Twenty spellings of one companion file took 19 s and 2.7 GB: read once now."""
    import pickle

    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "x.npy").write_bytes(pickle.dumps({"a": 1}))
    out = b"\x80\x02("
    for i in range(20):
        out += b"cjoblib.numpy_pickle_compat\nNDArrayWrapper\n)\x81"
        out += pickle.dumps({"filename": "./" * i + "x.npy", "subclass": None,
                             "allow_mmap": True}, protocol=2)[2:-1] + b"b"
    path = folder / "model.pkl"
    path.write_bytes(out + b"l.")
    ckpt, report, _ = scan_file(path)
    assert sum(1 for r in ckpt.pickles if r.file == "x.npy") == 1
    assert report.verdict == "needs-trust"


def test_a_rank_metadata_that_is_a_folder_does_not_crash(torch, tmp_path):
    import torch.distributed.checkpoint as dcp

    folder = tmp_path / "dcp"
    dcp.save({"w": torch.ones(2)}, checkpoint_id=str(folder))
    (folder / "__0.metadata").mkdir()
    _, report, error = scan_file(folder)
    assert error is None and report.verdict != "safe"


def test_a_good_object_array_written_at_protocol_2_is_not_a_polyglot(tmp_path):
    """pickle.load reads the object array's pickle with the outer memo and fails at its
    first STACK_GLOBAL (a wrapper where a module name should be): no polyglot."""
    import joblib
    import numpy as np

    path = tmp_path / "objects.joblib"
    joblib.dump({"a": np.array([1, "x"], dtype=object)}, path, protocol=2)
    _, report, _ = scan_file(path)
    assert report.verdict == "needs-trust", report.findings


def test_an_lz4_file_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "model.joblib"
    path.write_bytes(b"\x04\x22\x4d\x18" + bytes(20))
    from support import run_cli

    proc = run_cli("scan", str(path))
    assert proc.returncode == 3 and "lz4" in proc.stderr
