"""torch's own zip reader is the oracle: the records, bytes and pickles this reader takes
from a zip are the ones ``torch._C.PyTorchFileReader`` (miniz) gives ``torch.load``,
whatever Python's ``zipfile`` makes of the file; every trick that makes the two disagree
is a finding; and reading stays bounded on archives built to exhaust it."""

from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from pathlib import Path

import pytest

from ckpt_inspector.core.formats import _zip, _zip_members, torch_zip
from ckpt_inspector.core.io.source import BytesSource, LocalSource

import hostile_zip as H
from support import ROOT, build_sample, run_limited, scan_file

ZIP_SAMPLES = [s for s in H.SAMPLES if not s[0].startswith("pt2")]


# -- the differential test -------------------------------------------------------------------
def torch_view(torch, path: Path):
    """What torch's reader lists and returns, or a string where it refuses the archive."""
    try:
        reader = torch._C.PyTorchFileReader(str(path))
    except RuntimeError as err:
        return "refused: " + str(err).splitlines()[0]
    try:
        names = reader.get_all_records()
    except RuntimeError:
        names = None
    records = {}
    for name in [*(names or []), *PROBES]:
        try:
            records[name] = bytes(reader.get_record(name)) if reader.has_record(name) else None
        except RuntimeError:
            records[name] = "error"
    return names, records


def our_view(path: Path):
    raw = LocalSource(path).data
    try:
        directory = _zip.Directory(raw)
    except _zip.ZipError as err:
        return "refused: " + str(err)
    names = directory.all_records()
    records = {}
    for name in [*(names or []), *PROBES]:
        entry = directory.record(name)
        if entry is None:
            records[name] = None
            continue
        if _zip_members.torch_refuses(entry):
            records[name] = "error"
            continue
        try:
            records[name] = _zip_members.read_member(raw, entry, 1 << 30)[0]
        except _zip_members.MemberError:
            records[name] = "error"
    return names, records


# lookups torch makes whatever the listing says (and a few case variants)
PROBES = ["data.pkl", "DATA.PKL", "Data.Pkl", "version", ".data/version", "byteorder",
          "constants.pkl", "data/0", "archive_format", "no/such/record"]


def differential_corpus(torch, tmp: Path) -> dict[str, bytes]:
    """Normal files of each kind torch writes, and zips built to make readers disagree."""
    out: dict[str, bytes] = {}
    buf = io.BytesIO()
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    torch.save(net.state_dict(), buf)
    out["state_dict"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save(net, buf)
    out["whole_model"] = buf.getvalue()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(net), buf)
    out["torchscript"] = buf.getvalue()
    out["pt2"] = H.simple_zip(H._pt2_parts(torch))
    for name, builder, *_ in ZIP_SAMPLES:
        if not name.startswith("archive"):
            out[name] = build_sample(torch, builder, tmp / "never")
    members = H.benign_members(torch)
    pkl = next(d for n, d in members if n.endswith("data.pkl"))
    # duplicates in every order, with case variants: which one miniz's heap sort meets
    variants = ["archive/data.pkl", "archive/DATA.pkl", "archive/data.PKL", "archive/Data.pkl"]
    for k in range(6):
        rng = random.Random(k)
        recs = list(members)
        for i, v in enumerate(rng.sample(variants, 3)):
            recs.insert(rng.randrange(1, len(recs) + 1), (v, pkl + bytes([i]) * 3))
        out[f"dups_{k}"] = H.simple_zip(recs)
    # many names, some equal but for case, in random order
    rng = random.Random(7)
    many = [("archive/version", b"3\n")]
    for i in range(400):
        n = f"archive/r/{rng.choice(['a', 'A', 'b', 'B'])}{rng.randrange(60)}"
        many.append((n, f"{i}".encode()))
    out["many_case_names"] = H.simple_zip(many)
    # a NUL inside a name: listed cut short, looked up whole
    out["nul_name"] = H.simple_zip([*members, (b"archive/constants.pkl\0x", b"(.")])
    # a record outside the first record's folder: get_all_records raises
    out["outside_root"] = H.simple_zip([*members, ("elsewhere/x", b"x")])
    # the root comes from the FIRST record, even a deep one
    out["root_from_first"] = H.simple_zip([("deep/a/b", b""), *[
        (n.replace("archive/", "deep/"), d) for n, d in members]])
    # a comment after the end record, holding a second end-record signature
    z = H.RawZip()
    recs = [z.add(n, d) for n, d in members]
    out["comment_with_signature"] = z.finish(recs, comment=b"see PK\x05\x06 here" + b"!" * 40)
    # compressed records, a stored record with a time whose sizes disagree (miniz reads the
    # method as 32 bits and skips the check), and zip64 records written by zipfile
    z = H.RawZip()
    recs = [z.add(n, d, method=8 if i % 2 else 0) for i, (n, d) in enumerate(members)]
    out["deflated"] = z.finish(recs)
    z = H.RawZip()
    recs = [z.add(n, d, time=0x1234) for n, d in members]
    recs[-1].size = max(recs[-1].size - 1, 0)
    out["stored_sizes_disagree"] = z.finish(recs)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in members:
            with zf.open(n, "w", force_zip64=True) as f:
                f.write(d)
    out["zip64_records"] = buf.getvalue()
    # damaged directories torch refuses
    good = H.simple_zip(members)
    eocd = good.rindex(b"PK\x05\x06")
    out["count_mismatch"] = good[:eocd + 8] + struct.pack("<H", 1) + good[eocd + 10:]
    out["directory_past_end"] = good[:eocd + 16] + struct.pack("<I", len(good)) + good[eocd + 20:]
    out["truncated"] = good[:len(good) // 2]
    return out


def test_listing_and_bytes_match_torchs_reader(torch, tmp_path):
    corpus = differential_corpus(torch, tmp_path)
    checked = 0
    for name, data in corpus.items():
        path = tmp_path / f"{name}.zip"
        path.write_bytes(data)
        theirs, ours = torch_view(torch, path), our_view(path)
        if isinstance(theirs, str):
            if "reading zip archive" in theirs:  # miniz refused: so must we
                assert isinstance(ours, str), (name, theirs)
            continue  # refused later (no version record ...): nothing is loaded
        assert not isinstance(ours, str), (name, ours, theirs)
        assert ours[0] == theirs[0], name  # the listing, in order (None: torch raises)
        assert ours[1] == theirs[1], name  # each record's bytes, as torch finds it
        checked += 1
    assert checked >= len(corpus) - 4


def test_duplicates_are_read_as_torch_picks_them(torch, tmp_path):
    """The heap-sort emulation on a larger directory: each lookup gives torch's record."""
    rng = random.Random(3)
    members = [("archive/version", b"3\n")]
    for i in range(3000):
        members.append((f"archive/{rng.choice(['x', 'X'])}/{rng.randrange(300)}", b"%d" % i))
    path = tmp_path / "dups.zip"
    path.write_bytes(H.simple_zip(members))
    reader = torch._C.PyTorchFileReader(str(path))
    raw = LocalSource(path).data
    directory = _zip.Directory(raw)
    assert directory.case_duplicates
    for name in {n.split("/", 1)[1] for n, _ in members}:
        entry = directory.record(name)
        data = _zip_members.read_member(raw, entry, 1 << 20)[0]
        assert data == bytes(reader.get_record(name)), name


# -- each class of trick ---------------------------------------------------------------------
@pytest.mark.parametrize("sample", ZIP_SAMPLES, ids=[s[0] for s in ZIP_SAMPLES])
def test_tricks_are_found_and_nothing_runs(torch, tmp_path, marker, sample):
    name, builder, expect, code, _about = sample
    path = tmp_path / name
    path.write_bytes(build_sample(torch, builder, marker))
    _ckpt, report, _error = scan_file(path)
    assert report.verdict == expect, [f.message for f in report.findings]
    assert code in {f.code for f in report.findings}
    assert "posix.system" in report.globals or "os.system" in report.globals


def test_each_trick_is_live_for_torch_load(torch, tmp_path):
    """In a child process, torch.load(weights_only=False) runs each payload: the tricks
    are real, and only a reader that follows torch's zip reader reports them."""
    jobs = []
    for name, loader in H.LIVE.items():
        if loader != "torch.load":
            continue
        builder = next(b for n, b, *_ in H.SAMPLES if n == name)
        flag = tmp_path / f"ran-{name}"
        path = tmp_path / name
        path.write_bytes(build_sample(torch, builder, flag))
        jobs.append((str(path), str(flag)))
    script = ("import json, os, sys, warnings, torch\nwarnings.simplefilter('ignore')\n"
              "out = {}\nfor path, flag in json.loads(sys.argv[1]):\n"
              "    try:\n        torch.load(path, weights_only=False)\n"
              "    except Exception:\n        pass\n"
              "    out[path] = os.path.exists(flag)\nprint(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    ran = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(ran.values()), ran


def test_first_record_decides_the_root(torch, tmp_path):
    """torch looks everything up under the first record's folder: a data.pkl elsewhere is
    never loaded; this reader still shows it, and says torch cannot load the file."""
    members = H.replace(H.benign_members(torch), "data.pkl", b"\x80\x02}q\x00.")
    path = tmp_path / "root.pt"
    path.write_bytes(H.simple_zip([("other/readme", b"hi"), *members]))
    ckpt, _report, _error = scan_file(path)
    assert any("torch cannot load" in w for w in ckpt.warnings)
    assert not any(p.executed for p in ckpt.pickles)
    with pytest.raises(RuntimeError):
        torch.load(path, weights_only=False)


def test_sniffing_reads_only_a_prefix(tmp_path):
    """A stored text record is tried as a pickle from its first 64 KiB only."""
    raw = H.simple_zip([("archive/notes.txt", b"x" * (10 << 20))])
    directory = _zip.Directory(raw)
    budget = [torch_zip.MAX_SNIFF_TOTAL]
    assert torch_zip.sniff_pickle(raw, directory.entries[0], budget) is None
    assert torch_zip.MAX_SNIFF_TOTAL - budget[0] <= torch_zip.SNIFF_BYTES


# -- bounds --------------------------------------------------------------------------------------
def deflate_bomb(prefix: bytes, size: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``prefix`` then zeros, ``size`` bytes in all, built from
    one compressed MiB repeated (full flushes make the pieces independent)."""
    chunk = 1 << 20
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix + b"\0" * (chunk - len(prefix))) + c.flush(zlib.Z_FULL_FLUSH)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = c.compress(b"\0" * chunk) + c.flush(zlib.Z_FULL_FLUSH)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    return head + zeros * (size // chunk - 1) + end, zlib.crc32(b"")


def bomb_zip(members: list[tuple[str, bytes, int | None]]) -> bytes:
    """Records given as (name, bytes, None) stored, or (name, deflate stream, inflated size)."""
    z = H.RawZip()
    recs = [z.add(n, d) if size is None else z.add_deflated(n, d, size)
            for n, d, size in members]
    return z.finish(recs)


def test_deflated_data_pkl_of_1_gib_is_capped(torch, tmp_path):
    prefix = b"\x80\x02\x8e" + struct.pack("<Q", 1 << 30)  # BINBYTES8 of 1 GiB: runs on
    stream, _crc = deflate_bomb(prefix, 1 << 30)
    members = [(n, stream, 1 << 30) if n.endswith("data.pkl") else (n, d, None)
               for n, d in H.benign_members(torch)]
    path = tmp_path / "bomb.pt"
    path.write_bytes(bomb_zip(members))
    proc = run_limited("scan", "--json", str(path))
    rss = proc.peak_kib
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["verdict"] == "dangerous"
    assert "unscanned-pickle" in {f["code"] for f in out["findings"]}
    assert "MiB the reader accepts" in json.dumps(out)
    assert rss < 1 << 20  # KiB: under 1 GiB


def test_archive_of_ten_1_gib_members_is_sniffed_from_prefixes(tmp_path):
    stream, _crc = deflate_bomb(b"", 1 << 30)
    path = tmp_path / "bombs.zip"
    path.write_bytes(bomb_zip([(f"part{i}.bin", stream, 1 << 30) for i in range(10)]))
    proc = run_limited("scan", "--json", str(path))
    rss = proc.peak_kib
    out = json.loads(proc.stdout)
    assert out["verdict"] == "safe", out  # zeros: nothing any loader could run
    assert rss < 1 << 20


def test_records_that_start_like_big_pickles_spend_a_budget(torch, tmp_path):
    """Twenty 64 MiB records that each start a pickle that goes on: read within the
    sniffing budget, the rest reported as not scanned."""
    prefix = b"\x80\x04\x8e" + struct.pack("<Q", (64 << 20) - 16)
    stream, _crc = deflate_bomb(prefix, 64 << 20)
    members = [(n, d, None) for n, d in H.benign_members(torch)]
    members += [(f"archive/extra/blob{i}", stream, 64 << 20) for i in range(20)]
    path = tmp_path / "sniff.pt"
    path.write_bytes(bomb_zip(members))
    proc = run_limited("scan", "--json", str(path))
    rss = proc.peak_kib
    out = json.loads(proc.stdout)
    assert "unscanned-member" in {f["code"] for f in out["findings"]}
    assert out["verdict"] == "needs-trust"
    assert rss < 1 << 20


def test_blank_lines_in_torchscript_code_are_linear(torch, tmp_path):
    """120,000 blank lines after a class's __parameters__ line (``^\\s+`` made each line
    start rescan all of them: 36 s before)."""
    net = torch.nn.Linear(2, 2)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(net), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        parts = [(i.filename, zf.read(i)) for i in zf.infolist()]
    code = (b'class Linear(Module):\n  __parameters__ = ["weight", "bias", ]\n'
            + b"\n" * 120_000 + b"  pass\n")
    parts = [(n, code if n.endswith("modules/linear.py") else d) for n, d in parts]
    path = tmp_path / "blank.pt"
    path.write_bytes(H.simple_zip(parts))
    proc = run_limited("info", "--json", str(path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    roles = {t["key"]: t.get("role") for t in json.loads(proc.stdout)["tensors"]}
    assert roles.get("weight") == "parameter", roles


def test_checkpoint_with_100000_tensors_opens(torch, tmp_path):
    path = tmp_path / "many.pt"
    torch.save({f"layer{i}.w": torch.zeros(1) for i in range(100_000)}, path)
    proc = run_limited("scan", "--json", str(path), timeout=120)
    rss = proc.peak_kib
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "safe"
    assert rss < 1 << 20


def test_directory_claiming_too_many_records_is_refused():
    count = _zip.MAX_RECORDS + 1
    z = H.RawZip(b"\0" * (count * 46))
    end = z.zip64_end(count, count * 46, 0)
    z.zip64_locator(end)
    z.end(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    with pytest.raises(_zip.ZipError, match="records"):
        _zip.Directory(z.bytes())


def test_an_archive_past_the_readers_bound_is_not_said_to_be_refused_by_torch(
        torch, tmp_path, monkeypatch):
    """torch opens an archive of more records than this reader lists: the message must not
    say torch cannot, and what was not read is not vouched for."""
    from ckpt_inspector.core.errors import CheckpointError
    from ckpt_inspector.core.ops.session import open_file
    from ckpt_inspector.core.scan import scan

    path = tmp_path / "five.pt"
    torch.save({f"w{i}": torch.zeros(2) for i in range(5)}, path)
    monkeypatch.setattr(_zip, "MAX_RECORDS", 4)
    with pytest.raises(CheckpointError) as err:
        open_file(str(path))
    message = str(err.value)
    assert "is not read here" in message and "torch's reader may open it" in message, message
    assert "torch cannot open" not in message
    assert scan(err.value.partial, message).verdict == "dangerous"


def test_a_pickle_ending_in_an_archive_past_the_bound_is_a_polyglot(torch, tmp_path,
                                                                    monkeypatch):
    """A pickle with a torch archive appended: torch.jit.load opens the archive from its
    end. One of more records than this reader lists is not known: never 'safe'."""
    import pickle

    from support import scan_file

    archive = tmp_path / "a.pt"
    torch.save({f"w{i}": torch.zeros(2) for i in range(5)}, archive)
    both = tmp_path / "both.pkl"
    both.write_bytes(pickle.dumps({"epoch": 3}, protocol=2) + archive.read_bytes())
    assert scan_file(both)[1].verdict == "dangerous"  # listed and read: a polyglot
    monkeypatch.setattr(_zip, "MAX_RECORDS", 4)
    _ckpt, report, _error = scan_file(both)
    assert report.verdict == "dangerous", report.findings
    assert any(f.code == "polyglot" and "not read here" in f.message
               for f in report.findings)


def test_record_starting_a_pickle_past_the_cap_is_reported(torch):
    """A record (not named .pkl) whose pickle goes on past 64 MiB: not silently passed."""
    prefix = b"\x80\x04\x8e" + struct.pack("<Q", 100 << 20)
    stream, _crc = deflate_bomb(prefix, 100 << 20)
    members = [(n, d, None) for n, d in H.benign_members(torch)]
    members.append(("archive/extra/blob", stream, 100 << 20))
    raw = bomb_zip(members)
    ckpt = open_checkpoint_bytes(raw)
    found = [f for f in ckpt.findings if f.code == "unscanned-member"]
    assert found and "archive/extra/blob" in found[0].message


def open_checkpoint_bytes(raw: bytes):
    from ckpt_inspector.core.tree import Checkpoint

    ckpt = Checkpoint("<bytes>", "torch-zip", None, file_size=len(raw))  # type: ignore[arg-type]
    ckpt.root = torch_zip.read_into(ckpt, BytesSource("<bytes>", raw), "")
    return ckpt


def _zip64_everywhere(members: list[tuple[str, bytes]], odd: bool = False) -> bytes:
    """A zip whose central records each keep sizes and offset in a zip64 field, as
    torch.save's writer does past 4 GiB (``odd``: one more field after it on the first
    record, which Python's zipfile and miniz need not read alike)."""
    z = H.RawZip()
    recs = [z.add(n, d) for n, d in members]
    cd = bytearray()
    for i, r in enumerate(recs):
        extra = struct.pack("<HHQQQ", 1, 24, r.size, len(r.data), r.offset)
        if odd and i == 0:
            extra += struct.pack("<HH", 0xCAFE, 0)
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45, 0, 0, 0, 0, r.crc,
                          0xFFFFFFFF, 0xFFFFFFFF, len(r.name), len(extra), 0, 0, 0, 0,
                          0xFFFFFFFF)
        cd += r.name + extra
    at = z.put(bytes(cd))
    end64 = z.zip64_end(len(recs), len(cd), at)
    z.zip64_locator(end64)
    z.end(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    return z.bytes()


def test_zip64_records_as_torch_writes_them_are_not_listed_again(torch, tmp_path, monkeypatch):
    """Records whose zip64 field zipfile reads as miniz does count as plain: a checkpoint
    past 4 GiB is no longer listed a second time by zipfile (2.5 KB a record)."""
    from ckpt_inspector.core.formats import _zip_audit

    path = tmp_path / "zip64.pt"
    path.write_bytes(_zip64_everywhere(H.benign_members(torch)))
    assert torch.load(path)["w"].tolist() == [1.0, 1.0]  # torch's reader takes it
    calls = []
    real = _zip_audit.zipfile_view
    monkeypatch.setattr(_zip_audit, "zipfile_view", lambda raw: calls.append(1) or real(raw))
    _, report, error = scan_file(path)
    assert error is None and report.verdict == "safe", report.findings
    assert not calls
    path.write_bytes(_zip64_everywhere(H.benign_members(torch), odd=True))
    _, report, _ = scan_file(path)
    assert calls and report.verdict == "safe", report.findings  # compared, and agrees


def test_zipfiles_listing_is_compared_up_to_a_bound(torch, tmp_path, monkeypatch):
    """Found by a red-team review: 1,000,000 records, one with an odd extra field, made
    both listings be kept (2.5 GB, 30 s). Past the bound the comparison is not made, and
    the file is not called safe."""
    from ckpt_inspector.core.formats import _zip_audit

    monkeypatch.setattr(_zip_audit, "MAX_COMPARED", 4)
    path = tmp_path / "many.pt"
    path.write_bytes(_zip64_everywhere(H.benign_members(torch), odd=True))
    calls = []
    monkeypatch.setattr(_zip_audit, "zipfile_view", lambda raw: calls.append(1))
    _, report, _ = scan_file(path)
    assert not calls
    assert report.verdict == "needs-trust"
    assert any(f.code == "zip-unverified" for f in report.findings)


def test_past_the_bound_another_directory_is_still_dangerous(torch, tmp_path, marker,
                                                             monkeypatch):
    """Found by review: past the bound a directory zipfile finds elsewhere (offsets shifted
    by 'prepended data') was only needs-trust; the layout says so without a listing."""
    from ckpt_inspector.core.formats import _zip_audit

    monkeypatch.setattr(_zip_audit, "MAX_COMPARED", 2)
    calls = []
    monkeypatch.setattr(_zip_audit, "zipfile_view", lambda raw: calls.append(1))
    path = tmp_path / "shifted.pt"
    path.write_bytes(build_sample(torch, H.shifted_offsets, marker))
    _, report, _ = scan_file(path)
    assert not calls
    assert report.verdict == "dangerous"
    assert any(f.code == "zip-mismatch" for f in report.findings)
