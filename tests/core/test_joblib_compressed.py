"""joblib files and files compressed whole (``formats._joblib``, ``formats._unpack``).

joblib.load reads each numpy array's bytes right after its wrapper in the pickle stream,
and runs an object array's pickle there; it unpacks zlib, gzip, bz2, LZMA and xz by their
first bytes, as pandas.read_pickle and ``pickle.load(gzip.open(...))`` do by name. Files
are made here with joblib.dump, gzip, bz2, lzma and zlib themselves; arrays' values are
compared with joblib.load's; every payload would create the marker file, and an oracle
(joblib.load in a child process) shows each one runs."""

from __future__ import annotations

import bz2
import gzip
import lzma
import pickle
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import key_of

from support import Payload, numpy_arrays, payload, run_cli, scan_file

joblib = pytest.importorskip("joblib")

ARRAYS = numpy_arrays()
COMPRESS = {"plain": 0, "zlib": 3, "gzip": ("gzip", 3), "bz2": ("bz2", 3),
            "lzma": ("lzma", 3), "xz": ("xz", 3)}
WRAP = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
        "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE), "z": zlib.compress}


def _tensors(ckpt):
    return {key_of(p)[-1] if isinstance(key_of(p), tuple) else key_of(p): n.tensor
            for p, n in ckpt.tensors()}


@pytest.mark.parametrize("how", COMPRESS)
def test_joblib_arrays_are_tensors_with_joblibs_values(tmp_path, how):
    path = tmp_path / f"arrays_{how}.joblib"
    joblib.dump({**ARRAYS, "names": np.array(["a", "bb"], dtype=object), "n": 3}, path,
                compress=COMPRESS[how])
    want = joblib.load(path)
    ckpt = open_checkpoint(path)
    report = scan(ckpt)
    assert report.verdict == "needs-trust", report.findings  # numpy's dtype, not a payload
    assert not [f for f in report.findings if f.severity == "dangerous"]
    got = {}
    for p, node in ckpt.tensors():
        got[str(p[-1])] = node.tensor
    assert set(got) == set(ARRAYS)
    for name, info in got.items():
        assert info.problem is None, name
        values = to_numpy(info)
        assert values.shape == want[name].shape, name
        np.testing.assert_array_equal(values, want[name], err_msg=name)


def _hostile(tmp_path, marker, how):
    """Payloads joblib.load runs: before any array, after an array (pickle.load breaks at
    the array's bytes first), and inside an object array."""
    touch = f"touch {marker}"
    files = {}
    files["after_array"] = {"w": np.ones(4, dtype=np.float32), "z": Payload(touch)}
    files["object_array"] = {"w": np.array([Payload(touch)], dtype=object)}
    files["late_object_array"] = {"w": np.ones(3), "o": np.array([1, Payload(touch)],
                                                                   dtype=object)}
    out = {}
    for name, obj in files.items():
        path = tmp_path / f"{name}_{how}.joblib"
        joblib.dump(obj, path, compress=COMPRESS[how])
        out[name] = path
    return out


@pytest.mark.parametrize("how", COMPRESS)
def test_payloads_joblib_runs_are_dangerous(tmp_path, marker, how):
    for name, path in _hostile(tmp_path, marker, how).items():
        report = scan(open_checkpoint(path))
        assert report.verdict == "dangerous", (name, report.findings)
        assert "posix.system" in report.flagged_names(), (name, report.flagged_names())


def _wrapper_stream(array_bytes: bytes, tail: bytes = b"s.") -> bytes:
    """{'w': <uint8 array>} as joblib writes it before aligned arrays (no padding byte),
    by hand: the array's bytes are whatever the caller gives."""
    dtype = (b"cnumpy\ndtype\nX\x02\x00\x00\x00u1\x89\x88\x87R(K\x03X\x01\x00\x00\x00|NNN"
             b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"\x80\x02}X\x01\x00\x00\x00wcjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81}("
            b"X\x08\x00\x00\x00subclasscnumpy\nndarray\n"
            b"X\x05\x00\x00\x00shapeJ" + struct.pack("<i", len(array_bytes)) + b"\x85"
            b"X\x05\x00\x00\x00orderX\x01\x00\x00\x00CX\x05\x00\x00\x00dtype" + dtype
            + b"ub" + array_bytes + tail)


def _polyglot(tmp_path, marker):
    path = tmp_path / "poly.joblib"
    evil = pickle.dumps(Payload(f"touch {marker}"), protocol=2)[2:]  # opcodes, no PROTO
    path.write_bytes(_wrapper_stream(evil))
    return path


@pytest.mark.slow
def test_joblib_load_runs_each_payload(tmp_path):
    """The oracles: joblib.load in a child process runs every payload above, and
    pickle.load runs the polyglot's."""
    files = []
    for n, how in enumerate(COMPRESS):
        for name in ("after_array", "object_array", "late_object_array"):
            sub = tmp_path / f"o{n}{name}"
            sub.mkdir()
            marker = sub / "ran"
            files.append((_hostile(sub, marker, how)[name], marker))
    code = ("import sys, joblib\nfor p in sys.argv[1:]:\n    try:\n        joblib.load(p)\n"
            "    except Exception:\n        pass\n")
    subprocess.run([sys.executable, "-c", code, *(str(p) for p, _ in files)],
                   capture_output=True, timeout=120, cwd=tmp_path)
    assert [str(p) for p, m in files if not m.exists()] == []
    poly = tmp_path / "poly"
    poly.mkdir()
    path = _polyglot(poly, poly / "ran")
    code = "import sys, pickle\npickle.load(open(sys.argv[1], 'rb'))"
    subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
    assert (poly / "ran").exists()
    loaded = subprocess.run([sys.executable, "-c", "import sys, joblib; "
                             "print(joblib.load(sys.argv[1])['w'].size)", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert loaded.stdout.strip().isdigit()  # to joblib, only an array


def test_array_bytes_that_pickle_load_runs_are_a_polyglot(tmp_path, marker):
    """An array whose bytes are a payload to pickle.load (and torch.load), data to
    joblib.load: dangerous."""
    report = scan(open_checkpoint(_polyglot(tmp_path, marker)))
    assert report.verdict == "dangerous"
    assert any(f.code == "polyglot" for f in report.findings)
    assert "posix.system" in report.flagged_names()


def test_plain_array_bytes_are_not_read_as_opcodes(tmp_path):
    """The same stream with harmless bytes: only joblib's reading is kept."""
    path = tmp_path / "ok.joblib"
    path.write_bytes(_wrapper_stream(bytes(range(40))))
    ckpt = open_checkpoint(path)
    report = scan(ckpt)
    assert report.verdict == "needs-trust", report.findings
    [(_, node)] = list(ckpt.tensors())
    assert to_numpy(node.tensor).tolist() == list(range(40))


def test_a_void_dtype_flagged_as_objects_is_dangerous(tmp_path, marker):
    """numpy 2 takes a void dtype whose pickled flags say "objects" for an object array
    (joblib then runs a pickle there); no joblib.dump writes one."""
    path = tmp_path / "void.joblib"
    joblib.dump({"w": np.zeros(2, dtype="V8")}, path, protocol=2)
    raw = path.read_bytes()
    old = b"NNNK\x08K\x01K\x00t"
    assert raw.count(old) == 1
    path.write_bytes(raw.replace(old, b"NNNK\x08K\x01K\x01t"))
    _, report, _ = scan_file(path)
    assert report.verdict == "dangerous"
    assert any(f.code == "joblib-unread" for f in report.findings)


def test_an_array_past_the_end_or_of_unknown_size_is_never_safe(tmp_path):
    path = tmp_path / "big.joblib"
    joblib.dump({"w": np.zeros(4, dtype=np.float32)}, path, protocol=2)
    raw = path.read_bytes()
    cut = tmp_path / "cut.joblib"
    cut.write_bytes(raw[:len(raw) - 12])  # into the array's bytes
    ckpt_err = run_cli("scan", str(cut))
    assert ckpt_err.returncode != 0
    structured = tmp_path / "structured.joblib"
    joblib.dump({"w": np.zeros(2, dtype=[("a", "f4"), ("b", "i2")])}, structured)
    _, report, _ = scan_file(structured)
    assert report.verdict != "safe"
    assert any(f.code == "joblib-unread" for f in report.findings)


@pytest.mark.parametrize("suffix", WRAP)
def test_a_compressed_pickle_is_unpacked_and_scanned(tmp_path, marker, suffix):
    evil = tmp_path / f"evil.pkl.{suffix}"
    evil.write_bytes(WRAP[suffix](pickle.dumps({"a": Payload(f"touch {marker}")})))
    report = scan(open_checkpoint(evil))
    assert report.verdict == "dangerous"
    assert "posix.system" in report.flagged_names()
    plain = tmp_path / f"plain.pkl.{suffix}"
    plain.write_bytes(WRAP[suffix](pickle.dumps({"a": [1, 2.5, "x"]})))
    ckpt = open_checkpoint(plain)
    assert scan(ckpt).verdict == "safe"
    assert ckpt.metadata["container"] in ("gzip", "bzip2", "xz", "lzma", "zlib")
    [child] = ckpt.root.children
    assert child.key == "plain.pkl"


def test_a_gzipped_torch_file_and_tar_gz_show_their_tensors(torch, tmp_path, marker):
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    src = tmp_path / "model.pt"
    torch.save(sd, src)
    gz = tmp_path / "model.pt.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    ckpt = open_checkpoint(gz)
    assert scan(ckpt).verdict == "safe"
    [(_p, node)] = list(ckpt.tensors())
    np.testing.assert_array_equal(to_numpy(node.tensor), sd["w"].numpy())
    import tarfile
    tgz = tmp_path / "models.tar.gz"
    evil = tmp_path / "evil.pt"
    torch.save({"x": Payload(f"touch {marker}")}, evil)
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(src, "model.pt")
        tar.add(evil, "evil.pt")
    report = scan(open_checkpoint(tgz))
    assert report.verdict == "dangerous"
    assert "posix.system" in report.flagged_names()


def test_a_compressed_member_of_a_zip_is_unpacked(tmp_path, marker):
    import zipfile
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.pkl.gz", gzip.compress(pickle.dumps(Payload(f"touch {marker}"))))
    report = scan(open_checkpoint(path))
    assert report.verdict == "dangerous"
    assert "posix.system" in report.flagged_names()


def test_a_compression_bomb_is_bounded(tmp_path):
    path = tmp_path / "bomb.pkl.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        block = b"\0" * (1 << 20)
        for _ in range(300):  # 300 MiB unpacked, past the 256 MiB read
            f.write(block)
    proc = run_cli("scan", str(path))
    assert proc.returncode == 1 and "unpacks to more than" in proc.stdout


def test_damaged_data_keeps_what_came_before(tmp_path, marker):
    """A loader reads the stream up to where it breaks: the payload before it runs."""
    raw = gzip.compress(pickle.dumps(Payload(f"touch {marker}"))) + b"\x1f\x8bgarbage"
    path = tmp_path / "damaged.pkl.gz"
    path.write_bytes(raw)
    report = scan(open_checkpoint(path))
    assert report.verdict == "dangerous"


def test_cli_says_what_reads_it(tmp_path):
    path = tmp_path / "arrays.joblib"
    joblib.dump({"w": np.ones(3)}, path, compress=3)
    proc = run_cli("scan", str(path))
    assert "joblib.load(path)" in proc.stdout
    plain = tmp_path / "arrays_plain.joblib"
    joblib.dump({"w": np.ones(3)}, plain)
    proc = run_cli("info", str(plain))
    assert proc.returncode == 0 and "written by: joblib.dump" in proc.stdout


def test_joblibs_old_z_file_is_unpacked(tmp_path, marker):
    """joblib < 0.9.3 wrote "ZF", the length in hex, then zlib data (joblib.load still
    reads it, with its compat unpickler)."""
    from joblib.numpy_pickle_compat import write_zfile

    path = tmp_path / "old.pkl"
    with open(path, "wb") as f:
        write_zfile(f, pickle.dumps({"a": Payload(f"touch {marker}")}, protocol=2))
    _, report, _ = scan_file(path)
    assert report.verdict == "dangerous"
    assert "posix.system" in report.flagged_names()
    ok = tmp_path / "old_ok.pkl"
    with open(ok, "wb") as f:
        write_zfile(f, pickle.dumps({"a": [1, 2]}, protocol=2))
    ckpt, report, _ = scan_file(ok)
    assert report.verdict == "safe" and ckpt.metadata["container"] == "joblib-zfile"


@pytest.mark.parametrize("name", ["arr_01.npy", "../outside.npy"])
def test_old_joblib_companion_arrays_are_named(tmp_path, name):
    """joblib < 0.10 kept arrays in files beside the pickle (NDArrayWrapper); joblib.load
    still reads them with numpy.load(allow_pickle=True): the oracle shows a payload in one
    runs; the reader names the file (and calls a path out of the folder dangerous)."""
    from joblib.numpy_pickle_compat import NDArrayWrapper

    folder = tmp_path / "model"
    folder.mkdir()
    ran = tmp_path / "ran"  # the oracle's marker: the scan must not create it
    np.save(folder / name, np.array([Payload(f"touch {ran}")], dtype=object),
            allow_pickle=True)
    path = folder / "model.pkl"
    path.write_bytes(pickle.dumps({"w": NDArrayWrapper(name, np.ndarray)}, protocol=2))
    _, report, _ = scan_file(path)
    codes = {f.code: f.severity for f in report.findings}
    assert codes.get("companion-file") == ("dangerous" if ".." in name else "needs-trust")
    assert report.verdict == "dangerous"
    if ".." not in name:  # beside it: read, its payload found
        assert "posix.system" in report.flagged_names()
    assert not ran.exists()
    oracle = subprocess.run(
        [sys.executable, "-c", "import sys, joblib, warnings; warnings.simplefilter('ignore');"
         " joblib.load(sys.argv[1])", str(path)], capture_output=True, timeout=60)
    assert ran.exists(), oracle.stderr  # the oracle ran it: the payload is real


def test_the_torch_load_answer_knows_every_compression_unpacked():
    from ckpt_inspector.core.formats import _unpack
    from ckpt_inspector.core.torch_load_formats import COMPRESSED

    assert set(COMPRESSED) == set(_unpack.UNPACKED)


def _lzma_alone_pickle(marker) -> bytes:
    """Found by a red-team review: ``I0\\0\\0\\0`` is an LZMA "alone" header (lc 1, lp 3,
    pb 1, a 48-byte dictionary) that lzma.open accepts, and an INT that pickle.load reads
    as 0 (C's strtol stops at the NUL; the line runs to the final newline). Unpacked, the
    file is a payload. Only ``]\\0`` was taken for LZMA: it was a safe pickle."""
    filters = [{"id": lzma.FILTER_LZMA1, "lc": 1, "lp": 3, "pb": 1, "dict_size": 4096}]
    for pad in range(1, 5000):
        inner = payload(marker) + b"\0" * pad
        raw = lzma.compress(inner, format=lzma.FORMAT_ALONE, filters=filters)
        data = b"I0\0\0\0" + struct.pack("<Q", len(inner)) + raw[13:] + b"\n."
        if b"\n" not in data[:-2]:
            return data
    raise AssertionError("no such file")


def test_an_lzma_header_of_any_properties_is_unpacked(tmp_path, monkeypatch):
    """(The marker is named relative to the folder each side runs in: the same bytes
    whatever the test's folder, as the header's trick needs a stream without a newline.)"""
    from ckpt_inspector.core.formats import _unpack

    data = _lzma_alone_pickle("marker")
    scanned, oracle = tmp_path / "scanned", tmp_path / "oracle"
    scanned.mkdir()
    oracle.mkdir()
    (scanned / "model.pkl.xz").write_bytes(data)
    (oracle / "model.pkl.xz").write_bytes(data)
    assert pickle.loads(data) == 0  # a harmless pickle, read as one
    monkeypatch.chdir(scanned)  # where the payload would create its marker
    _, report, _ = scan_file(scanned / "model.pkl.xz")
    assert report.verdict == "dangerous"
    assert "posix.system" in report.flagged_names() or "os.system" in report.flagged_names()
    subprocess.run([sys.executable, "-c", "import lzma, pickle; pickle.load(lzma.open("
                    "'model.pkl.xz'))"], cwd=oracle, capture_output=True, timeout=60)
    assert (oracle / "marker").exists()  # as pandas.read_pickle of an .xz reads it
    assert not (scanned / "marker").exists()
    plain = lzma.compress(b"x" * 100, format=lzma.FORMAT_ALONE)
    assert _unpack.kind_of(plain) == "lzma"
    for size in (0, 0xFFFFFFFF):  # dictionary sizes liblzma also accepts (found by review)
        odd = plain[:1] + struct.pack("<I", size) + plain[5:]
        assert lzma.LZMADecompressor().decompress(odd) == b"x" * 100
        assert _unpack.kind_of(odd) == "lzma"
    assert _unpack.kind_of(bytes(64)) is None  # zeros: no LZMA file


@pytest.mark.parametrize("method", ["zlib", "gzip", "bz2", "xz", "lzma"])
def test_a_compressed_joblib_file_with_a_large_array_reads_as_the_plain_one(tmp_path, method):
    """Found by review: an array past the first 64 KiB made a compressed joblib file
    'dangerous' (only the prefix was handed on, where the array's bytes run out)."""
    import joblib

    value = {"w": np.arange(100_000.0), "names": np.array(["a", None], dtype=object)}
    plain, packed = tmp_path / "plain.joblib", tmp_path / f"packed.{method}.joblib"
    joblib.dump(value, plain)
    joblib.dump(value, packed, compress=(method, 3))
    expected = scan_file(plain)[1].verdict
    assert expected != "dangerous"
    assert scan_file(packed)[1].verdict == expected
