"""A bounded, fixed-seed round of the structure-aware fuzzer over every format, and
minimal reproducers of what it found (the long runs are fuzz/fuzz_reader.py).

The round checks, for each input: the reader returns or raises CheckpointError, the
info/scan commands end in 0, 1 or 3 with printable output, within a time and a memory
limit, and an input whose payload torch runs (asked in a child) is never ``safe``.
Findings already reproduced below may be passed as ``--known`` while their fix is open:
the round still fails on anything new. Every reproducer below passes: each was found by
the fuzzer, fixed, and kept as a regression test (its docstring says what was wrong).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from support import ROOT, Payload

sys.path.insert(0, str(ROOT / "fuzz"))

import fuzz_reader
import tar_mutator
import zip_mutator

FORMATS = ("zip", "pt2", "tar", "onnx", "safetensors", "pickle")
ITERATIONS = 350  # per format: about 25 s for the round on 2 cores
ATHERIS_RUNS = 300

# signature patterns of findings still open (each with a failing reproducer below)
KNOWN: tuple[str, ...] = ()


def edit_zip(data: bytes, edit) -> bytes:
    """A copy of a zip; ``edit(name, bytes)`` returns the records to write in its place."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            for name, body in edit(info.filename, zin.read(info)):
                zout.writestr(name, body)
    return out.getvalue()


def tar_of(members: list[tuple[str, bytes | str]]) -> bytes:
    """A tar; a ``str`` body makes the member a hard link to that name."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            if isinstance(body, str):
                info.type, info.linkname = tarfile.LNKTYPE, body
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def no_proto_pickle(command: str) -> bytes:
    """``os.system(command)`` written with protocol 4 opcodes but no PROTO opcode first:
    its first byte is SHORT_BINUNICODE (0x8c). pickle.load takes it as it is."""
    cmd = command.encode()
    return (b"\x8c\x02os\x8c\x06system\x93X" + len(cmd).to_bytes(4, "little") + cmd
            + b"\x85R.")


def torch_save(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def edit_pt2(base: bytes, weights=None, model=None, add=()) -> bytes:
    """A .pt2 with its weights config and graph JSON edited and records added."""
    root = zipfile.ZipFile(io.BytesIO(base)).namelist()[0].split("/")[0]

    def edit(name: str, body: bytes):
        if weights and name.endswith("model_weights_config.json"):
            config = json.loads(body)
            body = weights(config) or json.dumps(config).encode()
        if model and name.endswith("models/model.json"):
            value = json.loads(body)
            body = json.dumps(model(value) or value).encode()
        yield name, body
        if name.endswith("/archive_format"):
            for member, data in add:
                yield f"{root}/{member}", data

    return edit_zip(base, edit)


# -- hostile inputs the reader called safe (or unreadable) while torch runs them ---------
def pt2_pickled_weight(base: bytes, command: str) -> bytes:
    """``use_pickle``: torch.export.load passes the record to torch.load(weights_only=False)."""
    def weights(config):
        config["config"]["weight"]["use_pickle"] = True

    evil = torch_save({"x": Payload(command)})
    return edit_zip(edit_pt2(base, weights),
                    lambda n, b: [(n, evil if n.endswith("/weights/weight_0") else b)])


def pt2_legacy_weights(base: bytes, command: str) -> bytes:
    """``data/weights/model.pt``: the old layout; torch.export.load torch.loads it."""
    return edit_pt2(base, add=[("data/weights/model.pt", torch_save({"x": Payload(command)}))])


def pt2_opaque_constant(base: bytes, command: str) -> bytes:
    """A constant named ``opaque_obj_*``: torch.export.load calls pickle.loads on it."""
    meta = json.loads(zipfile.ZipFile(io.BytesIO(base)).read(
        next(n for n in zipfile.ZipFile(io.BytesIO(base)).namelist()
             if n.endswith("model_weights_config.json"))))["config"]["weight"]["tensor_meta"]
    config = {"config": {"c": {"path_name": "opaque_obj_0", "is_param": False,
                               "use_pickle": True, "tensor_meta": meta}}}
    with_constant = edit_zip(base, lambda n, b: [(n, json.dumps(config).encode()
                                                  if n.endswith("constants_config.json")
                                                  else b)])
    return edit_pt2(with_constant, add=[("data/constants/opaque_obj_0",
                                         pickle.dumps(Payload(command), protocol=2))])


def zip_case_twin(command: str) -> bytes:
    """``archive/data.PKL`` beside ``archive/data.pkl``: miniz, torch's zip reader, finds
    names ignoring case and takes the twin; a protocol 0 stream is not sniffed as a pickle."""
    import torch

    clean = torch_save({"w": torch.ones(2)})
    evil = pickle.dumps(Payload(command), protocol=0)
    return edit_zip(clean, lambda n, b: ([(n, b)] if not n.endswith("/data.pkl") else
                                         [(n, b), (n[:-3] + "PKL", evil)]))


def legacy_tar_hard_link(command: str) -> bytes:
    """torch < 0.4's tar whose ``storages`` is a hard link: tarfile.extract follows it."""
    return tar_of([("evil", pickle.dumps(Payload(command), protocol=0)), ("storages", "evil")])


def archive_hard_link(command: str) -> bytes:
    """A tar of checkpoints whose ``model.pt`` is a hard link to an unnamed payload."""
    return tar_of([("data/blob", pickle.dumps(Payload(command), protocol=0)),
                   ("release/model.pt", "data/blob")])


def tar_then_zip(command: str) -> bytes:
    """A tar of a README with a zip after its end blocks: tar extracts the README, zipfile
    and unzip (which allow bytes before an archive) extract a payload ``model.pt``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("release/model.pt", pickle.dumps(Payload(command), protocol=2))
    return tar_of([("README.txt", b"weights inside")]) + out.getvalue()


def archive_member_without_proto(command: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("model.pt", no_proto_pickle(command))
    return out.getvalue()


def archive_member_past_the_end(command: str) -> bytes:
    """A zip whose deflated member declares 1,000 more compressed bytes than the file holds:
    zipfile and unzip inflate it anyway (the deflate stream ends by itself)."""
    member = zip_mutator.Entry(b"model.pt", pickle.dumps(Payload(command), protocol=2),
                               method=zip_mutator.DEFLATED, encode="deflate")
    member.csize = len(zip_mutator._encoded(member)) + 1000
    return zip_mutator.build(zip_mutator.Zip([member]))


def pt2_behind_a_stub(base: bytes, command: str) -> bytes:
    """A shell stub in front of a .pt2, the offsets counted from the start of the file (as
    self-extracting archives are written): torch.export.load still reads it."""
    z = zip_mutator.parse(pt2_opaque_constant(base, command))
    z.prefix = b"#!/bin/sh\n"
    return zip_mutator.build(z)


def pt2_legacy_layout_size_lie(command: str) -> bytes:
    """The legacy .pt2 layout (serialized_constants.pt, torch.load'ed with a
    weights_only=False retry) whose stored constants record declares 32,767 bytes
    uncompressed for its 1.3 kB: torch reads it, the reader skips it."""
    import torch

    import hostile_zip

    z = zip_mutator.parse(hostile_zip.pt2_legacy_layout(torch, Path(command.split(" ", 1)[1])))
    for e in z.entries:
        e.align = 0
        if e.name == b"serialized_constants.pt":
            e.usize = 32767
    return zip_mutator.build(z)


HOSTILE = {  # name -> (builder, whether it needs the .pt2 seed, how a user loads it)
    "pt2_pickled_weight": (pt2_pickled_weight, True, "pt2"),
    "pt2_legacy_weights": (pt2_legacy_weights, True, "pt2"),
    "pt2_opaque_constant": (pt2_opaque_constant, True, "pt2"),
    "zip_case_twin": (zip_case_twin, False, "torch"),
    "legacy_tar_hard_link": (legacy_tar_hard_link, False, "torch"),
    "archive_hard_link": (archive_hard_link, False, "archive"),
    "archive_member_without_proto": (archive_member_without_proto, False, "archive"),
    "bare_pickle_without_proto": (no_proto_pickle, False, "torch"),
    "archive_member_past_the_end": (archive_member_past_the_end, False, "archive"),
    "tar_then_zip": (tar_then_zip, False, "archive"),
    "pt2_behind_a_stub": (pt2_behind_a_stub, True, "pt2"),
    "pt2_legacy_layout_size_lie": (pt2_legacy_layout_size_lie, False, "pt2"),
}


def build(name: str, seeds: Path, command: str) -> bytes:
    builder, needs_pt2, _loader = HOSTILE[name]
    if needs_pt2:
        return builder((seeds / "linear.pt2").read_bytes(), command)
    return builder(command)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    subprocess.run([sys.executable, str(ROOT / "fuzz" / "make_seeds.py"), str(folder)],
                   check=True, timeout=300, capture_output=True)
    return folder


def verdict(path: Path) -> str | None:
    """The reader's verdict, ``None`` when it read nothing at all."""
    return fuzz_reader.check(str(path))["verdict"]


@pytest.mark.slow
def test_hostile_reproducers_are_live(seeds, tmp_path):
    """Each reproducer below really runs its payload under the loader a user would use
    (torch.load, torch.export.load, or torch.load of the extracted member), in a child."""
    cases = {}
    for name, (_builder, _pt2, loader) in HOSTILE.items():
        folder = tmp_path / name
        folder.mkdir()
        path = folder / ("input.pt2" if loader == "pt2" else "input")
        path.write_bytes(build(name, seeds, f"touch {folder / 'MARKER'}"))
        cases[name] = (str(path), loader)
    script = ("import json, sys, oracle\n"
              "for path, loader in json.loads(sys.argv[1]).values():\n"
              "    try:\n"
              "        oracle._load(path, loader)\n"
              "    except BaseException:\n"
              "        pass\n")
    subprocess.run([sys.executable, "-c", script, json.dumps(cases)], cwd=ROOT / "fuzz",
                   timeout=300, capture_output=True)
    dead = [name for name in HOSTILE if not (tmp_path / name / "MARKER").exists()]
    assert not dead, f"payloads that did not run: {dead}"


@pytest.mark.parametrize("name", ["pt2_pickled_weight", "pt2_legacy_weights",
                                  "pt2_opaque_constant"])
def test_pt2_records_torch_export_load_unpickles(seeds, tmp_path, marker, name):
    """Was (fixed): pt2 reader does not read the records torch.export.load unpickles:
    use_pickle weights, data/weights/model.pt, opaque_obj_ constants."""
    path = tmp_path / "model.pt2"
    path.write_bytes(build(name, seeds, f"touch {marker}"))
    assert verdict(path) == "dangerous"


def test_zip_case_twin_of_data_pkl(seeds, tmp_path, marker):
    """Was (fixed): torch's zip reader (miniz) finds data.pkl ignoring case; the reader
    neither flags case-insensitive duplicates nor reads data.PKL, whose protocol 0
    stream it does not sniff as a pickle."""
    path = tmp_path / "model.pt"
    path.write_bytes(build("zip_case_twin", seeds, f"touch {marker}"))
    assert verdict(path) == "dangerous"


def test_legacy_tar_member_as_hard_link(seeds, tmp_path, marker):
    """Was (fixed): torch_tar.members_of keeps regular files only; torch extracts a hard-
    linked 'storages' and unpickles it."""
    path = tmp_path / "model.tar"
    path.write_bytes(build("legacy_tar_hard_link", seeds, f"touch {marker}"))
    assert verdict(path) == "dangerous"


def test_archive_member_as_hard_link(seeds, tmp_path, marker):
    """Was (fixed): archive reader skips hard links: extracted, release/model.pt is the
    payload."""
    path = tmp_path / "release.tar"
    path.write_bytes(build("archive_hard_link", seeds, f"touch {marker}"))
    assert verdict(path) == "dangerous"


@pytest.mark.parametrize("name", ["archive_member_without_proto", "bare_pickle_without_proto"])
def test_pickle_without_proto(seeds, tmp_path, marker, name):
    """Was (fixed): pickle_file.sniff does not know pickles that start with a protocol 4
    opcode and no PROTO (0x8c here); pickle.load does."""
    path = tmp_path / "model.pkl"
    path.write_bytes(build(name, seeds, f"touch {marker}"))
    assert verdict(path) == "dangerous"


@pytest.mark.parametrize("name", ["pt2_behind_a_stub", "pt2_legacy_layout_size_lie"])
def test_pt2_torch_export_load_reads_anyway(seeds, tmp_path, marker, name):
    """Was (fixed): a .pt2 behind a stub is 'not recognised' (detection wants PK at byte
    0), a stored record of the legacy .pt2 layout whose uncompressed size disagrees is
    skipped: torch.export.load runs both."""
    path = tmp_path / "model.pt2"
    path.write_bytes(build(name, seeds, f"touch {marker}"))
    assert verdict(path) == "dangerous"


def test_archive_member_past_the_end(seeds, tmp_path, marker):
    """Was (fixed): archive reader: a deflated member whose compressed size runs past the
    end of the file is skipped without a finding."""
    path = tmp_path / "release.zip"
    path.write_bytes(build("archive_member_past_the_end", seeds, f"touch {marker}"))
    assert verdict(path) == "dangerous"


def test_tar_that_is_also_a_zip(seeds, tmp_path, marker):
    """Was (fixed, found by the fuzz round): a tar whose end is a zip directory (the zip
    inside a FIFO's unskipped data, or after the end blocks) was called safe; zipfile
    extracts its payload."""
    path = tmp_path / "release.tar"
    path.write_bytes(build("tar_then_zip", seeds, f"touch {marker}"))
    assert verdict(path) == "dangerous"


def test_tar_of_a_torch_file_is_not_a_polyglot(tmp_path):
    """A tar whose last member is a torch.save zip: zipfile finds that member's directory
    at the end, inside the member's data: a member, not a second archive."""
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    path = tmp_path / "release.tar"
    path.write_bytes(tar_of([("README.txt", b"hi"), ("release/model.pt", buf.getvalue())]))
    assert verdict(path) == "safe"


def test_a_zip_inside_a_members_data_is_a_polyglot(tmp_path, marker):
    """Was (found by the red team): a member whose data is some text and then a zip was
    exempt as 'a zip member of the tar', yet read by no one as a zip (it does not start
    with one); zipfile and unzip open the tar as that zip and extract its payload."""
    import zipfile

    import torch

    from support import Payload

    pt = io.BytesIO()
    torch.save({"w": torch.zeros(2), "x": Payload(f"touch {marker}")}, pt)
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("model.pt", pt.getvalue())
    path = tmp_path / "release.tar"
    path.write_bytes(tar_of([("readme.txt", b"hi" + inner.getvalue())]))
    with zipfile.ZipFile(path) as z:  # what zipfile makes of the tar
        assert z.namelist() == ["model.pt"]
    assert verdict(path) == "dangerous"


@pytest.mark.slow
def test_member_shorter_than_declared_in_an_archive(tmp_path):
    """Was (fixed): archive._pickle_bytes loops for ever when a member inflates to fewer
    bytes than its declared size: the 'cut' prefix is read whole, is still shorter, and
    is tried again."""
    member = zip_mutator.Entry(b"README.txt", b"weights", method=zip_mutator.DEFLATED,
                               encode="deflate", usize=255)
    path = tmp_path / "release.zip"
    path.write_bytes(zip_mutator.build(zip_mutator.Zip([member])))
    proc = subprocess.run([sys.executable, str(ROOT / "fuzz" / "fuzz_reader.py"), "check",
                           "--timeout", "5", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_pickle_broken_after_its_payload_is_read(tmp_path, marker):
    """Was (fixed): a pickle that runs os.system and then breaks (BINPUT eats the next
    opcode) is 'not recognised' by the pickle sniffing in the working tree of this
    commit, so it is unreadable with no finding."""
    cmd = f"touch {marker}".encode()
    text = b"X" + len(cmd).to_bytes(4, "little") + cmd
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x02]q\x00cposix\nsystem\nq\x01" + text + b"q\x02\x85q\x03R"
                     + b"qcos\nsystem\n(S'x'\ntR.")
    assert verdict(path) == "dangerous"


# -- inputs that make a reader raise something else than CheckpointError ----------------
def _meta(**values):
    return lambda c: c["config"]["weight"]["tensor_meta"].update(values)


PT2_EDITS = {  # name -> (the JSON record edited, the edit)
    "tensor_meta null": ("weights", lambda c: c["config"]["weight"].update(tensor_meta=None)),
    "dtype a list": ("weights", _meta(dtype=[7])),
    "sizes true": ("weights", _meta(sizes=True)),
    "device a string": ("weights", _meta(device="cpu")),
    "config a list": ("weights", lambda c: c.update(config=[])),
    "nested 100,000 deep": ("weights", lambda c: b'{"config": ' + b"[" * 100_000
                            + b"]" * 100_000 + b"}"),
    "graph_module null": ("model", lambda m: m.update(graph_module=None)),
    "nodes true": ("model", lambda m: m["graph_module"]["graph"].update(nodes=True)),
}


@pytest.mark.parametrize("edit", list(PT2_EDITS))
def test_pt2_json_of_the_wrong_shape(seeds, tmp_path, edit):
    """Was (fixed): pt2 reader trusts the JSON's types (AttributeError, TypeError) and its
    depth (RecursionError)."""
    path = tmp_path / "model.pt2"
    record, change = PT2_EDITS[edit]
    path.write_bytes(edit_pt2((seeds / "linear.pt2").read_bytes(), **{record: change}))
    fuzz_reader.check(str(path))


def safetensors_file(header: bytes) -> bytes:
    return len(header).to_bytes(8, "little") + header + b"\0" * 4


@pytest.mark.parametrize("header", [
    b'{"w": {"dtype": {"F32": 1}, "shape": [1], "data_offsets": [0, 4]}}',
    b'{"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}',
    b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
], ids=["dtype an object", "dtype a list", "nested 100,000 deep"])
def test_safetensors_header_of_the_wrong_shape(tmp_path, header):
    """Was (fixed): safetensors reader: a dtype that is a list or an object is looked up in
    a dict (TypeError); json.loads of a deep header raises RecursionError."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_file(header))
    fuzz_reader.check(str(path))


def test_tar_in_a_zip_with_a_huge_pax_size(tmp_path):
    """Was (fixed): torch_tar.members_of lets tarfile's OverflowError out: a PAX size of
    2**66 makes it seek past what BytesIO can."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("storages")
        info.size = 4
        info.pax_headers = {"size": str(2 ** 66)}
        t.addfile(info, io.BytesIO(b"\0" * 4))
    path = tmp_path / "release.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model.tar", tar.getvalue())
    fuzz_reader.check(str(path))


def test_tar_member_past_the_end(tmp_path):
    """Was (fixed): archive._members raises _zip.MemberError (not a CheckpointError) for a
    tar member whose size runs past the end: a PAX GNU.sparse.size record changes the
    size after tarfile stepped over the data."""
    path = tmp_path / "release.tar"
    path.write_bytes(tar_mutator.build(tar_mutator.Tar([tar_mutator.Member(
        "release/model.pt", b"\0" * 100, pax={"GNU.sparse.size": "1000000"})])))
    fuzz_reader.check(str(path))


def test_lone_surrogate_in_a_name_is_printable(tmp_path):
    """Was (fixed): cli.print_info prints names as they are: a lone surrogate (JSON \udcff)
    fails on a strict UTF-8 stdout with a traceback."""
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_file(
        b'{"\\udcff": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'))
    proc = subprocess.run([sys.executable, "-m", "ckpt_inspector", "info", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


# -- the fuzz round ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fuzz_round(seeds, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz-found")
    summary = out / "summary.json"
    cmd = [sys.executable, str(ROOT / "fuzz" / "fuzz_reader.py"), "run", str(seeds),
           "--iterations", str(ITERATIONS), "--seed", "0", "--out", str(out / "inputs"),
           "--summary", str(summary), "--timeout", "20", "--oracle-timeout", "5"]
    for pattern in KNOWN:
        cmd += ["--known", pattern]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out)
    assert summary.exists(), proc.stderr[-4000:]
    return json.loads(summary.read_text()), proc


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzz_round(fuzz_round, fmt):
    summary, proc = fuzz_round
    counts = summary["families"][fmt]
    assert counts["inputs"] >= ITERATIONS
    new = {sig: f for sig, f in summary["findings"].items()
           if f["family"] == fmt and not f["known"]}
    assert not new, (new, proc.stderr[-6000:])


@pytest.mark.slow
def test_atheris_round(seeds, tmp_path):
    """The coverage-guided target runs with the structure-aware custom mutator."""
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("state_dict.pt", "legacy_tar.pt", "model.onnx"):
        (corpus / name).write_bytes((seeds / name).read_bytes())
    known = [arg for pattern in KNOWN for arg in ("--known", pattern)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_reader.py"), "atheris", "--no-oracle",
         *known, str(corpus), f"-runs={ATHERIS_RUNS}", "-timeout=20", "-rss_limit_mb=3000",
         f"-artifact_prefix={tmp_path}/", "-seed=1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert proc.returncode == 0 and not crashes, (crashes, proc.stderr[-4000:])
    assert "Custom" in proc.stderr  # libFuzzer reports the custom mutator's mutants
