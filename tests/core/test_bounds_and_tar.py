"""Tar, legacy and bare-pickle files read the way torch reads them, and header bombs in
safetensors, ONNX and the legacy format kept within time and memory.

Each trick's payload is first shown to run under ``torch.load(weights_only=False)`` (in
a child process), then the scan must call the file dangerous without running it."""

from __future__ import annotations

import io
import json
import pickle
import random
import subprocess
import sys
import tarfile

import pytest

from ckpt_inspector.core import CheckpointError, open_checkpoint
from ckpt_inspector.core.formats import _tar_listing, detect_format, torch_tar
from ckpt_inspector.core.scan import scan

import hostile_files as hf
from support import payload, run_limited, scan_file

SAMPLES = {name: (builder, expect, code) for name, builder, expect, code, _ in hf.SAMPLES}


def verdict_of(path):
    try:
        ckpt = open_checkpoint(path)
    except CheckpointError as err:
        if err.partial is None:
            return "refused", set()
        report = scan(err.partial, str(err))
    else:
        report = scan(ckpt)
    return report.verdict, {f.code for f in report.findings}


def test_torch_runs_each_trick(torch, tmp_path):
    """The oracle: torch.load(weights_only=False) runs every live sample's payload."""
    paths = []
    for name in sorted(hf.LIVE_WITH_TORCH):
        path = tmp_path / name
        path.write_bytes(SAMPLES[name][0](torch, tmp_path / f"{name}.ran"))
        paths.append(str(path))
    code = """
import sys, warnings, torch
warnings.simplefilter("ignore")
for p in sys.argv[1:]:
    try:
        torch.load(p, weights_only=False)
    except Exception:
        pass  # most fail after their payload ran (wrong magic number, missing data)
"""
    subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, timeout=300,
                   cwd=tmp_path)
    dead = [n for n in sorted(hf.LIVE_WITH_TORCH) if not (tmp_path / f"{n}.ran").exists()]
    assert not dead, f"payloads torch.load does not run: {dead}"


def test_each_sample_gets_its_verdict_and_nothing_runs(torch, tmp_path, marker):
    wrong = []
    for name, (builder, expect, code) in SAMPLES.items():
        path = tmp_path / name
        path.write_bytes(builder(torch, marker))
        verdict, codes = verdict_of(path)
        if verdict != expect or (code and code not in codes):
            wrong.append(f"{name}: {verdict} {sorted(codes)}, expected {expect} with {code}")
        path.unlink()
    assert not wrong, "\n".join(wrong)


# -- tar: detection and member resolution as tarfile does them -------------------------------
def _tar_opens(data: bytes) -> bool:
    """torch's test: tarfile.open(mode="r:") without a TarError."""
    try:
        tarfile.open(fileobj=io.BytesIO(data), mode="r:").close()
    except tarfile.TarError:
        return False
    return True


def test_is_tar_agrees_with_tarfile_open(torch, tmp_path):
    rng = random.Random(12)
    cases = {
        "v7": hf.tar_v7(torch, tmp_path / "m"),
        "gnu": hf.tar_bytes([("storages", b"x")]),
        "pax": hf.tar_bytes([("storages", b"x")], fmt=tarfile.PAX_FORMAT),
        "ustar": hf.tar_bytes([("storages", b"x")], fmt=tarfile.USTAR_FORMAT),
        "zeros": bytes(1024),
        "short": hf.tar_bytes([("a", b"")])[:300],
        "pickle": pickle.dumps({"a": 1}),
        "text": b"hello world\n" * 100,
        **{f"random{i}": rng.randbytes(2048) for i in range(20)},
    }
    for name, data in cases.items():
        if name == "zeros":  # an empty archive: torch fails on it, nothing runs
            assert _tar_opens(data) and not torch_tar.is_tar(data[:512])
            continue
        assert torch_tar.is_tar(data[:512]) == _tar_opens(data), name
    assert torch_tar.is_tar(cases["v7"]) and not torch_tar.is_tar(cases["text"])


def test_tar_link_loop_and_member_cap_are_bounded(tmp_path, monkeypatch):
    loop = hf.tar_bytes([("storages", hf.EMPTY_STORAGES), ("tensors", hf.EMPTY_TENSORS),
                         ("a", ("sym", "b")), ("b", ("sym", "a")), ("pickle", ("sym", "a"))])
    path = tmp_path / "loop.pt"
    path.write_bytes(loop)
    with pytest.raises(CheckpointError, match="loop"):
        open_checkpoint(path)
    many = hf.tar_bytes([("storages", hf.EMPTY_STORAGES)]
                        + [(f"m{i}", b"") for i in range(60)])
    path = tmp_path / "many.pt"
    path.write_bytes(many)
    monkeypatch.setattr(_tar_listing, "MAX_MEMBERS", 50)
    with pytest.raises(CheckpointError, match="more than 50 members"):
        open_checkpoint(path)


def test_tar_symlink_to_an_extracted_member_reads_it(torch, tmp_path):
    """tensors -> storages: torch opens the extracted storages file a second time."""
    storages = pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)
    data = hf.tar_bytes([("storages", storages), ("tensors", ("sym", "storages")),
                         ("pickle", pickle.dumps({"epoch": 3}, protocol=2))])
    path = tmp_path / "alias.pt"
    path.write_bytes(data)
    assert torch.load(path, weights_only=False) == {"epoch": 3}
    ckpt = open_checkpoint(path)
    report = scan(ckpt)
    assert report.verdict == "dangerous" and "tar-link" in {f.code for f in report.findings}
    assert [c.key for c in ckpt.root.children] == ["epoch"]


# -- bare pickles ---------------------------------------------------------------------------
def test_random_bytes_are_still_not_a_checkpoint(tmp_path):
    rng = random.Random(7)
    for i in range(30):
        path = tmp_path / f"noise{i}.bin"
        path.write_bytes(rng.randbytes(4096))
        with pytest.raises(CheckpointError, match=r"not a checkpoint|not recognised"):
            detect_format(str(path))


def test_a_pickle_may_start_with_any_opcode(tmp_path):
    for prefix in (b"M\x01\x000", b"K\x07\x85" + b"0", b"N0", b"]0", b"\x88" + b"0"):
        path = tmp_path / "odd.pkl"
        path.write_bytes(prefix + pickle.dumps({"lr": 0.1}, protocol=2))
        assert pickle.loads(path.read_bytes()) == {"lr": 0.1}
        ckpt = open_checkpoint(path)
        assert [(c.key, c.value) for c in ckpt.root.children] == [("lr", 0.1)], prefix


# -- bounds: the CLI under a memory limit, with a clear message -----------------------------
@pytest.mark.parametrize("name, message", [
    ("safetensors_150000_dims.safetensors", "150,000 dimensions"),
    ("safetensors_overflowing_dims.safetensors", "overflows 64 bits"),
    ("safetensors_many_tensors.safetensors", "JSON values"),
    ("tar_pax_digits.pt", "digits: refused"),
])
def test_header_bombs_are_refused_with_a_reason(torch, tmp_path, marker, name, message):
    path = tmp_path / name
    path.write_bytes(SAMPLES[name][0](torch, marker))
    proc = run_limited("info", str(path), "--json", timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("name, message", [
    ("onnx_150000_dims", "more than 1,024 dimensions"),
    ("onnx_packed_dims", "more than 1,024 dimensions"),
])
def test_onnx_dimension_bombs_are_marked_not_multiplied(torch, tmp_path, name, message):
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(getattr(hf, name)(torch, tmp_path / "m"))
    proc = run_limited("info", str(path), "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    [tensor] = json.loads(proc.stdout)["tensors"]
    assert message in json.dumps(tensor)


def test_legacy_huge_integer_is_bounded_and_the_payload_found(torch, tmp_path, marker):
    path = tmp_path / "big_int.pt"
    path.write_bytes(hf.legacy_huge_integer(torch, marker))
    proc = run_limited("scan", str(path), "--json", timeout=120)
    report = json.loads(proc.stdout)
    assert report["verdict"] == "dangerous" and "posix.system" in report["globals"]


def test_a_legitimate_100000_tensor_safetensors_opens(tmp_path):
    n = 100_000
    parts = b",".join(b'"t%d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (i, i, i + 1)
                      for i in range(n))
    path = tmp_path / "many.safetensors"
    path.write_bytes(hf._safetensors(b"{" + parts + b"}", bytes(n)))
    proc = run_limited("scan", str(path), "--json", timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["verdict"] == "safe", proc.stderr



def test_a_tar_that_is_also_a_pickle_stream_is_dangerous(torch, tmp_path, marker):
    """torch.load(path) reads a tar; torch.load of the same bytes as a stream (io.BytesIO,
    a file from a URL) never tries tar and runs the pickle at byte 0. A benign tar whose
    first header starts such a pickle was 'safe', on its own and inside a zip."""
    import zipfile

    import hostile_zip

    ran = tmp_path / "ran"
    live = tmp_path / "live.pt"
    live.write_bytes(hostile_zip.tar_and_pickle(ran))
    code = ("import io, sys, torch\ntorch.load(sys.argv[1], weights_only=False)\n"
            "assert not __import__('os').path.exists(sys.argv[2]), 'ran from the file'\n"
            "try:\n    torch.load(io.BytesIO(open(sys.argv[1], 'rb').read()), "
            "weights_only=False)\nexcept Exception:\n    pass\n")
    proc = subprocess.run([sys.executable, "-c", code, str(live), str(ran)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert ran.exists(), "the payload runs from a stream"
    path = tmp_path / "both.pt"
    path.write_bytes(hostile_zip.tar_and_pickle(marker))
    with zipfile.ZipFile(tmp_path / "release.zip", "w") as z:
        z.write(path, "model.pt")
    for candidate in (path, tmp_path / "release.zip"):
        verdict, codes = verdict_of(candidate)
        assert verdict == "dangerous" and {"tar-and-pickle", "dangerous-import"} <= codes, (
            candidate, verdict, codes)


def test_a_real_tar_checkpoint_is_not_a_stream(torch, tmp_path):
    """The first header of a torch tar (its member's name) breaks as a pickle before it
    does anything: no finding."""
    path = tmp_path / "old.pt"
    path.write_bytes(hf.tar_bytes([("sys_info", pickle.dumps({"little_endian": True})),
                                   ("storages", hf.EMPTY_STORAGES),
                                   ("tensors", hf.EMPTY_TENSORS),
                                   ("pickle", pickle.dumps({"a": 1}, protocol=2))]))
    assert verdict_of(path) == ("safe", set())


def test_a_tar_whose_stream_hits_a_bound_before_its_payload_is_dangerous(torch, tmp_path,
                                                                         marker):
    """Found by review: the stream side of the polyglot first nests 1,001 tuples (past the
    interpreter's bound), then runs the payload: a stream not read was taken for one that
    does nothing, and the file was 'safe'."""
    import struct

    import hostile_zip

    raw = bytearray(hostile_zip.tar_and_pickle(marker))
    # the first member's data: POP, then the payload; put the deep tuples before it
    start = 512
    deep = b"N" + b"\x85" * 1001 + b"0"
    size = int(raw[124:135], 8)
    body = bytes(raw[start:start + size])
    new = body[:1] + deep + body[1:]
    raw[124:136] = b"%011o\0" % len(new)
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[0:512])
    rest = bytes(raw[start + size + (-size % 512):])
    data = bytes(raw[:512]) + new + bytes(-len(new) % 512) + rest
    path = tmp_path / "deep.pt"
    path.write_bytes(data)
    assert struct.unpack_from("<I", data, 3)[0] == 512 - 7  # still the BINBYTES header
    verdict, codes = verdict_of(path)
    assert verdict == "dangerous" and "tar-and-pickle" in codes, codes


def _tar_named_as_pickle(path, first: bytes) -> None:
    """A tar of one safetensors file whose name is ``first`` (tar headers start with it)."""
    import numpy as np
    from safetensors.numpy import save

    data = save({"w": np.zeros(2, np.float32)})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo(first.decode("latin-1"))
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def test_a_tar_whose_first_name_is_a_pickle_is_a_polyglot(tmp_path, monkeypatch):
    """Found by a red-team review: a tar's first bytes are its first member's name, here
    a protocol-0 pickle that pickle.load, joblib.load and numpy.load(allow_pickle=True)
    run; read as a tar alone, it was safe. (A name fits in 100 bytes: the marker is named
    relative to the folder each side runs in.)"""

    def name(m):
        return b"cposix\nsystem\n(S'touch " + m.encode() + b"'\ntR."

    scanned, oracle = tmp_path / "scanned", tmp_path / "oracle"
    scanned.mkdir()
    oracle.mkdir()
    path = scanned / "model.tar"
    _tar_named_as_pickle(path, name("marker"))
    monkeypatch.chdir(scanned)  # where the payload would create its marker
    _, report, _ = scan_file(path)
    assert report.verdict == "dangerous"
    assert any(f.code == "polyglot" for f in report.findings)
    _tar_named_as_pickle(oracle / "model.tar", name("ran"))
    subprocess.run([sys.executable, "-c", "import pickle; pickle.load(open('model.tar', "
                    "'rb'))"], cwd=oracle, capture_output=True, timeout=60)
    assert (oracle / "ran").exists()
    assert not (scanned / "marker").exists()
    plain = tmp_path / "plain.tar"  # a name that starts like GLOBAL: nothing is imported
    _tar_named_as_pickle(plain, b"checkpoint/model.safetensors")
    assert scan_file(plain)[1].verdict == "safe"


def test_a_tar_that_starts_like_a_zip_is_read_as_both(tmp_path, marker):
    """Found by a red-team review: a tar whose first member is named "PK\\3\\4readme", a
    zip appended after it. Its first bytes chose the zip reader, which never saw the
    tar's payload member, and called it safe; tar and tarfile extract that member."""
    import zipfile

    def build(path, m):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in (("PK\x03\x04readme", b"hello\n"), ("model.pkl", payload(m))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        path.write_bytes(buf.getvalue())
        with zipfile.ZipFile(path, "a") as z:
            z.writestr("weights.txt", b"just numbers")

    path = tmp_path / "model.tar"
    build(path, marker)
    _, report, _ = scan_file(path)
    assert report.verdict == "dangerous"
    assert any(f.code == "polyglot" for f in report.findings)
    assert any(f.code == "dangerous-import" for f in report.findings)
    ran = tmp_path / "ran"
    oracle = tmp_path / "oracle.tar"
    build(oracle, ran)
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-c", "import pickle, sys, tarfile; tarfile.open(sys.argv"
                    "[1]).extractall(sys.argv[2]); pickle.load(open(sys.argv[2] + "
                    "'/model.pkl', 'rb'))", str(oracle), str(out)], capture_output=True,
                   timeout=60)
    assert ran.exists()
    assert not marker.exists()
