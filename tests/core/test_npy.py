"""NumPy's .npy and .npz files (``core/formats/npy``): plain arrays shown as tensors whose
values match numpy.load; an object array's pickle, which numpy.load(allow_pickle=True)
runs, scanned like any pickle, alone, in an .npz (stored or deflated) and under any member
name; headers read as numpy reads them, within bounds."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from ckpt_inspector.core import CheckpointError, open_checkpoint
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import key_of

from support import Payload, numpy_arrays, run_cli, scan_file

ARRAYS = numpy_arrays()


def _tensors(ckpt):
    return {key_of(p): n.tensor for p, n in ckpt.tensors()}


@pytest.mark.parametrize("name", ARRAYS)
def test_a_plain_npy_is_a_safe_tensor_with_numpys_values(tmp_path, name):
    path = tmp_path / f"{name}.npy"
    np.save(path, ARRAYS[name])
    ckpt = open_checkpoint(path)
    assert ckpt.format == "npy"
    assert scan(ckpt).verdict == "safe"
    [(key, info)] = _tensors(ckpt).items()
    assert key == name and info.problem is None
    want = np.load(path)
    assert tuple(info.shape) == want.shape
    got = to_numpy(info)
    assert np.array_equal(got.astype(want.dtype.newbyteorder("=")), want)


def test_an_npz_shows_each_array_with_its_values(tmp_path):
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **ARRAYS)
        ckpt = open_checkpoint(path)
        assert scan(ckpt).verdict == "safe"
        got = _tensors(ckpt)
        with np.load(path) as npz:
            assert set(got) == {f"{k}.npy" for k in npz.files}
            for k in npz.files:
                info = got[f"{k}.npy"]
                assert np.array_equal(to_numpy(info).astype(npz[k].dtype.newbyteorder("=")),
                                      npz[k]), k


def _evil(marker):
    a = np.empty(2, dtype=object)
    a[0], a[1] = 1.5, Payload(f"touch {marker}")
    return a


NAMES = ("alone.npy", "stored.npz", "deflated.npz", "odd_name.zip", "python2.npy",
         # found by a red-team round: each was "safe"
         "lzma.npz", "bzip2.npz", "folder_name.npz", "empty_name.npz", "torch_zip.pt",
         "pt2_like.pt2", "zip_end_pickle.bin", "zip_end_junk.npz", "npy_tar.npy")


def _object_files(tmp_path, marker):
    """An object array whose pickle runs the payload, in every container numpy.load opens."""
    out = {}
    out["alone.npy"] = tmp_path / "alone.npy"
    np.save(out["alone.npy"], _evil(marker), allow_pickle=True)
    out["stored.npz"] = tmp_path / "stored.npz"
    np.savez(out["stored.npz"], x=_evil(marker), w=np.zeros(3))
    out["deflated.npz"] = tmp_path / "deflated.npz"
    np.savez_compressed(out["deflated.npz"], x=_evil(marker))
    # numpy.load reads any member that starts with the magic, whatever its name
    buf = io.BytesIO()
    np.save(buf, _evil(marker), allow_pickle=True)
    out["odd_name.zip"] = tmp_path / "odd_name.zip"
    with zipfile.ZipFile(out["odd_name.zip"], "w") as z:
        z.writestr("weights", buf.getvalue())
        z.writestr("readme.txt", "arrays")
    # a header of Python 2 ("2L"), which numpy filters before reading it
    out["python2.npy"] = tmp_path / "python2.npy"
    out["python2.npy"].write_bytes(_edit_header(buf.getvalue(), "(2,)", "(2L,)"))
    evil = buf.getvalue()
    # members zipfile unpacks and torch's reader does not
    for name, method in (("lzma.npz", zipfile.ZIP_LZMA), ("bzip2.npz", zipfile.ZIP_BZIP2)):
        out[name] = tmp_path / name
        with zipfile.ZipFile(out[name], "w", method) as z:
            z.writestr("a.npy", evil)
    # names zipfile lists like any other member: "x/" holding bytes, and ""
    for name, member in (("folder_name.npz", "x/"), ("empty_name.npz", "")):
        out[name] = tmp_path / name
        with zipfile.ZipFile(out[name], "w") as z:
            z.writestr(zipfile.ZipInfo(member), evil)
    # a torch.save zip torch.load reads as safe, with an object array numpy.load reads
    import torch

    out["torch_zip.pt"] = tmp_path / "torch_zip.pt"
    torch.save({"w": torch.zeros(3)}, out["torch_zip.pt"])
    with zipfile.ZipFile(out["torch_zip.pt"], "a") as z:
        z.writestr("torch_zip/w.npy", evil)
    out["pt2_like.pt2"] = tmp_path / "pt2_like.pt2"
    with zipfile.ZipFile(out["pt2_like.pt2"], "w") as z:
        z.writestr("archive/archive_format", "pt2")
        z.writestr("archive/version", "0")
        z.writestr("archive/models/x.json", "{}")
        z.writestr("archive/evil.npy", evil)
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w") as z:
        z.writestr("a.npy", evil)
    npz = npz.getvalue()
    # "PK\x05\x06" first: a harmless pickle to torch.load, an .npz to numpy.load
    out["zip_end_pickle.bin"] = tmp_path / "zip_end_pickle.bin"
    out["zip_end_pickle.bin"].write_bytes(b"PK\x05\x06\n0B" + struct.pack("<I", len(npz))
                                          + npz + b".")
    out["zip_end_junk.npz"] = tmp_path / "zip_end_junk.npz"
    out["zip_end_junk.npz"].write_bytes(b"PK\x05\x06" + b"\0" * 18 + npz)
    out["npy_tar.npy"] = tmp_path / "npy_tar.npy"
    out["npy_tar.npy"].write_bytes(_npy_and_tar(evil))
    return out


def _npy_and_tar(evil: bytes) -> bytes:
    """An object array whose first 512 bytes are also a V7 tar header (its checksum in a
    comment of the npy header): it was read as a harmless tar."""
    (length,) = struct.unpack("<H", evil[8:10])
    pickled = evil[10 + length:]
    text = "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }"
    header = bytearray(text.ljust(501).encode("latin1") + b"\n")
    header[70:71] = b"#"
    block = bytearray(b"\x93NUMPY\x01\x00" + struct.pack("<H", 502) + bytes(header))
    block[148:156] = b" " * 8
    block[148:156] = b"%07o " % (256 + sum(block[:148]) + sum(block[156:]))
    return bytes(block) + pickled


def _edit_header(raw: bytes, old: str, new: str) -> bytes:
    """A version 1 .npy with ``old`` replaced in its header, padded to the same length."""
    (length,) = struct.unpack("<H", raw[8:10])
    header = raw[10:10 + length].decode("latin1").replace(old, new)
    header = header.rstrip("\n ").ljust(length - 1) + "\n"
    assert len(header) == length
    return raw[:10] + header.encode("latin1") + raw[10 + length:]


@pytest.mark.slow
def test_numpy_load_runs_each_object_array(tmp_path):
    """The oracle: numpy.load(allow_pickle=True) in a child process runs every payload
    (and the child is thrown away)."""
    files = {}
    for n, name in enumerate(NAMES):
        sub = tmp_path / str(n)
        sub.mkdir()
        marker = sub / "ran"
        files[name] = (_object_files(sub, marker)[name], marker)
    code = """
import sys, numpy as np
for p in sys.argv[1:]:
    try:
        r = np.load(p, allow_pickle=True)
        if hasattr(r, "files"):
            [r[k] for k in r.files]
    except Exception:
        pass
"""
    subprocess.run([sys.executable, "-c", code, *(str(p) for p, _ in files.values())],
                   capture_output=True, timeout=120, cwd=tmp_path)
    assert [n for n, (_, m) in files.items() if not m.exists()] == []


def test_each_object_array_is_dangerous_and_nothing_runs(tmp_path, marker):
    for name, path in _object_files(tmp_path, marker).items():
        report = scan(open_checkpoint(path))
        assert report.verdict == "dangerous", name
        assert "posix.system" in report.flagged_names() or "os.system" in \
            report.flagged_names(), (name, report.flagged_names())


def test_an_object_array_of_plain_values_needs_trust(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([1, "a", None], dtype=object), allow_pickle=True)
    report = scan(open_checkpoint(path))
    assert report.verdict == "needs-trust"  # numpy.load runs its pickle: allow_pickle


def test_a_negative_size_does_not_hide_the_pickle(tmp_path, marker):
    """numpy checks only that the shape holds ints; the pickle is read all the same."""
    buf = io.BytesIO()
    np.save(buf, _evil(marker), allow_pickle=True)
    raw = _edit_header(buf.getvalue(), "(2,)", "(-2,)")
    path = tmp_path / "negative.npy"
    path.write_bytes(raw)
    assert scan(open_checkpoint(path)).verdict == "dangerous"


def _npy(header: bytes, version: int = 1, data: bytes = b"") -> bytes:
    length = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + length + header + data


@pytest.mark.parametrize("raw, why", [
    (_npy(b"{'descr': '|O', 'fortran_order': False, 'shape': (1,)" + b" " * (2 << 20) + b"}",
          version=2), "more than"),
    (_npy(b"[" * 100_000 + b"]" * 100_000, version=2), "literal"),
    (_npy(b"{'descr': '<f4', 'shape': (1,)}"), "descr, fortran_order and shape"),
    (_npy(b"{'descr': 'no such type', 'fortran_order': False, 'shape': (1,)}"), "descr"),
    (b"\x93NUMPY\x09\x00", "version"),
    (b"\x93NUMPY\x01\x00\xff\xff{", "truncated"),
])
def test_headers_numpy_refuses_are_refused_in_bounded_time(tmp_path, raw, why):
    path = tmp_path / "bad.npy"
    path.write_bytes(raw)
    with pytest.raises(CheckpointError, match=why):
        open_checkpoint(path)
    proc = run_cli("scan", str(path))
    assert proc.returncode != 0 and "safe" not in proc.stdout.split(":", 1)[-1][:20]


def test_a_cut_array_is_shown_damaged(tmp_path):
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros(1000, dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-100])
    [info] = _tensors(open_checkpoint(path)).values()
    assert info.problem and "truncated" in info.problem


def test_cli_info_and_torch_load_answer(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.ones((2, 3), dtype=np.float32))
    proc = run_cli("info", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout)
    assert out["format"] == "npy"
    assert out["tensors"][0]["shape"] == [2, 3]
    assert "numpy.load" in out["torch_load"]["loader"]
    assert out["torch_load"]["weights_only"] is False


def test_a_large_torch_zip_is_looked_through_at_once(torch, tmp_path, marker):
    """From 2,000 stored records the members are looked at in one vectorized pass: an
    object array among 2,500 tensors is found, and a plain torch zip has none."""
    from ckpt_inspector.core.formats import _npz_view

    path = tmp_path / "many.pt"
    torch.save({f"layer.{i}.w": torch.zeros(4) for i in range(2_500)}, path)
    report = scan(open_checkpoint(path))
    assert report.verdict == "safe" and not report.findings
    buf = io.BytesIO()
    np.save(buf, _evil(marker), allow_pickle=True)
    with zipfile.ZipFile(path, "a") as z:
        assert len(z.infolist()) > _npz_view.VECTORIZE
        z.writestr("many/data/evil", buf.getvalue())  # a storage's name, numpy's magic
    report = scan(open_checkpoint(path))
    assert report.verdict == "dangerous"
    assert any(f.code == "polyglot" and "many/data/evil" in f.message
               for f in report.findings)


def _torch_zip_with(torch, path, members, method=zipfile.ZIP_STORED):
    torch.save({"w": torch.zeros(3)}, path)
    with zipfile.ZipFile(path, "a", method) as z:
        for name, data in members:
            z.writestr(name, data)


def _evil_npy(marker) -> bytes:
    buf = io.BytesIO()
    np.save(buf, _evil(marker), allow_pickle=True)
    return buf.getvalue()


def test_members_the_npz_view_cannot_open_are_never_silent(torch, tmp_path, marker):
    """Found by review: a bzip2 member whose name holds a NUL (zipfile cuts the name, so a
    lookup by name fails) and compressed members past the 10,000th were skipped: 'safe'."""
    from ckpt_inspector.core.formats import _npz_view

    nul = tmp_path / "nul.pt"
    _torch_zip_with(torch, nul, [("nul/evilQ.npy", _evil_npy(marker))], zipfile.ZIP_BZIP2)
    raw = nul.read_bytes()
    nul.write_bytes(raw.replace(b"evilQ.npy", b"evil\0.npy"))
    assert scan(open_checkpoint(nul)).verdict != "safe"

    many = tmp_path / "many.pt"
    filler = [(f"many/x{i}", b"0123456789abcdef") for i in range(_npz_view.MAX_SLOW)]
    _torch_zip_with(torch, many, [*filler, ("many/evil.npy", _evil_npy(marker))],
                    zipfile.ZIP_DEFLATED)
    report = scan(open_checkpoint(many))
    assert report.verdict != "safe"
    assert any(f.code == "unscanned-member" for f in report.findings)


def test_a_torch_zip_inside_an_archive_is_looked_at_as_numpy_would(torch, tmp_path, marker):
    """Found by review: extracted, the member is an .npz to numpy.load."""
    inner = tmp_path / "model.pt"
    _torch_zip_with(torch, inner, [("model/evil.npy", _evil_npy(marker))])
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.write(inner, "weights.npz")
    report = scan(open_checkpoint(outer))
    assert report.verdict == "dangerous"
    assert any(f.code == "polyglot" for f in report.findings)


def test_many_records_of_one_object_array_are_read_once(torch, tmp_path, marker):
    """Found by review: 30 directory records pointing at one deflated 200 MB array took
    22 s and 4 GB; each local header is read once."""
    path = tmp_path / "same.pt"
    _torch_zip_with(torch, path, [("same/evil.npy", _evil_npy(marker))],
                    zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("same/evil.npy")
    raw = path.read_bytes()
    end = raw.rindex(b"PK\x05\x06")
    (count, size, start) = struct.unpack("<HII", raw[end + 10:end + 20])
    central = raw[start:start + size]
    mine = central[central.index(b"same/evil.npy") - 46:central.index(b"same/evil.npy") + 13]
    assert struct.unpack("<I", mine[42:46])[0] == info.header_offset
    copies = 30
    new_central = central + mine * copies
    tail = raw[end:end + 22]
    tail = tail[:8] + struct.pack("<HHII", count + copies, count + copies, len(new_central),
                                  start) + tail[20:]
    path.write_bytes(raw[:start] + new_central + tail)
    report = scan(open_checkpoint(path))
    assert report.verdict == "dangerous"
    assert sum(f.code == "polyglot" for f in report.findings) == 1


def test_a_python2_header_with_two_ls(tmp_path, marker):
    """numpy drops every L after a number, one after another too ("1L L")."""
    path = tmp_path / "ll.npy"
    path.write_bytes(_edit_header(_evil_npy(marker), "(2,)", "(2L L,)"))
    assert scan(open_checkpoint(path)).verdict == "dangerous"


def test_an_npz_is_answered_with_numpy_load(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, x=np.ones(3), y=np.zeros((2, 2)))
    proc = run_cli("scan", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "a NumPy .npz archive" in proc.stdout and "numpy.load(path)" in proc.stdout


def test_object_arrays_of_nested_torch_files_share_one_budget(tmp_path, monkeypatch, torch):
    """Found by a red-team review: a zip of torch.save files, each holding object arrays
    numpy.load would unpickle, gave each nested file its own 1 GiB of array bytes to read
    (a 23 MB file took 4.5 GB). The file and all it nests now share one budget (here made
    1 MiB: three arrays of 400 KB go past it, and the scan says so)."""
    import os

    from ckpt_inspector.core.formats import _quota

    monkeypatch.setattr(_quota, "MAX_ARRAY_BYTES", 1 << 20)
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as outer:
        for i in range(3):
            saved = io.BytesIO()
            torch.save({"w": torch.zeros(2)}, saved)
            arr = io.BytesIO()
            np.save(arr, np.array([Payload(f"touch {tmp_path / 'marker'}"), b"\0" * 400_000],
                                  dtype=object), allow_pickle=True)
            inner = io.BytesIO()
            with zipfile.ZipFile(io.BytesIO(saved.getvalue())) as src, \
                    zipfile.ZipFile(inner, "w") as dst:
                for name in src.namelist():
                    dst.writestr(name, src.read(name))
                dst.writestr("archive/extra.npy", arr.getvalue())
            outer.writestr(f"model{i}.pt", inner.getvalue())
    path = tmp_path / "bundle.zip"
    path.write_bytes(bundle.getvalue())
    _, report, _ = scan_file(path)
    assert report.verdict == "dangerous"
    assert any("MiB of arrays read for this file" in f.message for f in report.findings)
    assert not os.path.exists(tmp_path / "marker")
