"""Zip and .pt2 files built so that torch's zip reader (miniz) and Python's ``zipfile``
see different things, or that hide pickles where a loader runs them.

Each builder is ``name(torch, marker) -> bytes``: the payload creates ``marker`` if it
ever runs. :data:`SAMPLES` lists ``(filename, builder, expected verdict, a finding code
the scan must report, what the file does)``; :data:`LIVE` names the samples whose
payload ``torch.load(weights_only=False)`` (or ``torch.export.load``) really runs, which
the tests prove in a child process.

:class:`RawZip` writes zip structures byte by byte (``zipfile`` refuses to write most of
these).
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from support import Reduce, payload


# -- raw zip writing ------------------------------------------------------------------------------
@dataclass
class Record:
    name: bytes
    data: bytes  # as stored (compressed when method is 8)
    size: int  # uncompressed size
    crc: int
    method: int = 0
    offset: int = 0  # of the local header
    flags: int = 0
    external_attr: int = 0
    time: int = 0
    extra: bytes = field(default=b"")


class RawZip:
    """Append local records, then write any central directories and end records."""

    def __init__(self, prefix: bytes = b""):
        self.buf = bytearray(prefix)

    def add(self, name: str | bytes, data: bytes, *, method: int = 0,
            local_name: bytes | None = None, flags: int = 0, time: int = 0,
            external_attr: int = 0) -> Record:
        raw_name = name.encode() if isinstance(name, str) else name
        stored = data
        if method == 8:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            stored = c.compress(data) + c.flush()
        rec = Record(raw_name, stored, len(data), zlib.crc32(data), method, len(self.buf),
                     flags, external_attr, time)
        lname = raw_name if local_name is None else local_name
        self.buf += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, method, time, 0,
                                rec.crc, len(stored), len(data), len(lname), 0)
        self.buf += lname + stored
        return rec

    def add_deflated(self, name: str | bytes, stream: bytes, size: int, crc: int = 0) -> Record:
        """A record whose raw deflate ``stream`` (built by the caller) inflates to ``size``."""
        raw_name = name.encode() if isinstance(name, str) else name
        rec = Record(raw_name, stream, size, crc, 8, len(self.buf))
        self.buf += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc,
                                len(stream), size, len(raw_name), 0)
        self.buf += raw_name + stream
        return rec

    def pad(self, data: bytes) -> None:
        self.buf += data

    @staticmethod
    def central(records: list[Record], shift: int = 0, comment: bytes = b"") -> bytes:
        """Central-directory bytes; header offsets are stored minus ``shift``; ``comment``
        goes on the last record (to pad a directory to a given size)."""
        out = bytearray()
        for i, r in enumerate(records):
            c = comment if i == len(records) - 1 else b""
            out += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, r.flags, r.method,
                               r.time, 0, r.crc, len(r.data), r.size, len(r.name), 0, len(c), 0,
                               0, r.external_attr, r.offset - shift)
            out += r.name + c
        return bytes(out)

    def put(self, data: bytes) -> int:
        at = len(self.buf)
        self.buf += data
        return at

    def end(self, count: int, cd_size: int, cd_offset: int, comment: bytes = b"") -> int:
        at = len(self.buf)
        self.buf += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, cd_size,
                                cd_offset, len(comment)) + comment
        return at

    def zip64_end(self, count: int, cd_size: int, cd_offset: int) -> int:
        at = len(self.buf)
        self.buf += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                                cd_size, cd_offset)
        return at

    def zip64_locator(self, end_offset: int) -> None:
        self.buf += struct.pack("<4sIQI", b"PK\x06\x07", 0, end_offset, 1)

    def finish(self, records: list[Record], comment: bytes = b"") -> bytes:
        cd = self.central(records)
        at = self.put(cd)
        self.end(len(records), len(cd), at, comment)
        return bytes(self.buf)

    def bytes(self) -> bytes:
        return bytes(self.buf)


def members_of(torch, obj, **kw) -> list[tuple[str, bytes]]:
    """``torch.save(obj)``'s records, in order, with their bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def benign_members(torch) -> list[tuple[str, bytes]]:
    return members_of(torch, {"w": torch.ones(2)})


def replace(members: list[tuple[str, bytes]], name_end: str, data: bytes,
            new_name: str | None = None) -> list[tuple[str, bytes]]:
    return [((new_name or n) if n.endswith(name_end) else n, data if n.endswith(name_end) else d)
            for n, d in members]


def simple_zip(members: list[tuple[str | bytes, bytes]], **kw) -> bytes:
    z = RawZip()
    recs = [z.add(n, d, **kw) for n, d in members]
    return z.finish(recs)


# -- torch.load: the zip reader --------------------------------------------------------------
def case_renamed_data_pkl(torch, marker: Path) -> bytes:
    """data.pkl renamed Data.PKL: torch's lookup ignores case, exact-name scanners miss it."""
    members = replace(benign_members(torch), "data.pkl", payload(marker),
                      "archive/Data.PKL")
    return simple_zip(members)


def case_shadowed_data_pkl(torch, marker: Path) -> bytes:
    """A benign archive/data.pkl and a payload DATA.PKL: torch's binary search over names
    sorted without case meets the payload (zipfile's exact lookup finds the benign one)."""
    members = benign_members(torch)
    evil = [("archive/DATA.PKL", payload(marker))]
    # torch sorts with a heap sort and stops at the first equal name: with the payload
    # placed right after the real one, it is the one met (checked against torch in tests)
    out = []
    for n, d in members:
        out.append((n, d))
        if n.endswith("data.pkl"):
            out += evil
    return simple_zip(out)


def second_central_directory(torch, marker: Path) -> bytes:
    """The end record's directory offset points at a directory of a payload archive;
    zipfile reads the benign directory just before the end record (and shifts offsets)."""
    evil = replace(benign_members(torch), "data.pkl", payload(marker))
    benign = benign_members(torch)
    z = RawZip()
    e_recs = [z.add(n, d) for n, d in evil]
    z.pad(b"\0" * 4096)  # keeps zipfile's shifted offsets positive
    # both directories must have the same size: pad the shorter with a record comment
    e_len = sum(46 + len(n.encode()) for n, _ in evil)
    b_len = sum(46 + len(n.encode()) for n, _ in benign)
    e_cd = RawZip.central(e_recs, comment=b"#" * max(0, b_len - e_len))
    x = z.put(e_cd)
    b_recs = [z.add(n, d) for n, d in benign]
    b_cd_at = len(z.buf)
    b_cd = RawZip.central(b_recs, shift=b_cd_at - x, comment=b"#" * max(0, e_len - b_len))
    assert len(b_cd) == len(e_cd)
    z.put(b_cd)
    z.end(len(e_recs), len(e_cd), x)
    return z.bytes()


def zip64_locator_elsewhere(torch, marker: Path) -> bytes:
    """The zip64 locator points at a zip64 end record (and directory) of a payload
    archive; zipfile reads the zip64 end record just before the locator instead."""
    evil = replace(benign_members(torch), "data.pkl", payload(marker))
    benign = benign_members(torch)
    z = RawZip()
    e_recs = [z.add(n, d) for n, d in evil]
    e_cd = RawZip.central(e_recs)
    e_cd_at = z.put(e_cd)
    e_end = z.zip64_end(len(e_recs), len(e_cd), e_cd_at)
    b_recs = [z.add(n, d) for n, d in benign]
    b_cd = RawZip.central(b_recs)
    b_cd_at = z.put(b_cd)
    z.zip64_end(len(b_recs), len(b_cd), b_cd_at)
    z.zip64_locator(e_end)
    z.end(0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    return z.bytes()


def shifted_offsets(torch, marker: Path) -> bytes:
    """One central directory, twice: torch reads the copy where the end record says and
    takes its offsets as they are; zipfile reads the copy before the end record and adds
    the difference to every offset ("prepended data"). Same names, other bytes."""
    benign = benign_members(torch)
    pkl = next(n for n, _ in benign if n.endswith("data.pkl"))
    good = next(d for n, d in benign if n == pkl)
    bad = payload(marker)
    good, bad = good.ljust(len(bad), b"\0"), bad.ljust(len(good), b"\0")  # same sizes
    rest = [(n, d) for n, d in benign if n != pkl]

    def block(data_pkl: bytes) -> tuple[bytes, list[Record]]:
        z = RawZip()
        recs = [z.add(n, d) for n, d in rest] + [z.add(pkl, data_pkl)]
        return z.bytes(), recs

    evil_block, _ = block(bad)
    benign_block, recs = block(good)  # the directory: benign CRCs, so zipfile reads cleanly
    cd = RawZip.central(recs)
    x = len(evil_block)
    out = RawZip(evil_block + cd + benign_block)
    at = out.put(cd)
    out.end(len(recs), len(cd), x)
    assert at == 2 * x + len(cd)
    return out.bytes()


def short_entry_count(torch, marker: Path) -> bytes:
    """The end record counts fewer records than the directory holds: torch stops at the
    count (and sees the payload data.pkl), zipfile reads every record (a later benign
    data.pkl replaces it)."""
    members = benign_members(torch)
    z = RawZip()
    recs = [z.add(n, d) for n, d in replace(members, "data.pkl", payload(marker))]
    good = z.add(next(n for n, _ in members if n.endswith("data.pkl")),
                 next(d for n, d in members if n.endswith("data.pkl")))
    cd = RawZip.central([*recs, good])
    at = z.put(cd)
    z.end(len(recs), len(cd), at)
    return z.bytes()


def trailing_end_signature(torch, marker: Path) -> bytes:
    """Four bytes of an end-record signature after the real end record: zipfile gives up
    ("not a zip file"), torch reads the archive and its payload."""
    members = replace(benign_members(torch), "data.pkl", payload(marker))
    return simple_zip(members) + b"PK\x05\x06\0\0\0\0"


def local_name_differs(torch, marker: Path) -> bytes:
    """data.pkl's local header names another file: zipfile refuses to read it."""
    z = RawZip()
    recs = []
    for n, d in replace(benign_members(torch), "data.pkl", payload(marker)):
        recs.append(z.add(n, d, local_name=n.replace("data.pkl", "dbta.pkl").encode()))
    return z.finish(recs)


def crc_and_deflate(torch, marker: Path) -> bytes:
    """A deflated data.pkl with a wrong CRC: torch checks neither."""
    z = RawZip()
    recs = []
    for n, d in replace(benign_members(torch), "data.pkl", payload(marker)):
        r = z.add(n, d, method=8 if n.endswith("data.pkl") else 0)
        if n.endswith("data.pkl"):
            r.crc ^= 0xFFFF
        recs.append(r)
    return z.finish(recs)


# -- pickles a loader runs, hidden from first-byte sniffing ----------------------------------------
def pickle_not_starting_with_proto(torch, marker: Path) -> bytes:
    """A pickle in an extra record that starts with BININT2 ... POP, not PROTO."""
    hidden = b"M\x01\x000" + payload(marker)
    members = benign_members(torch)
    members.insert(1, ("archive/extra/notes.txt", hidden))
    return simple_zip(members)


def debug_pkl_payload(torch, marker: Path) -> bytes:
    """A payload in a .pkl record beside data.pkl, starting with MARK ... POP_MARK."""
    members = benign_members(torch)
    members.insert(1, ("archive/code/x.py.debug_pkl", b"(1" + payload(marker)))
    return simple_zip(members)


def safetensors_polyglot(torch, marker: Path) -> bytes:
    """A plain zip holding model.safetensors whose first bytes pass the safetensors sniff
    and are also a pickle that imports os.system."""
    body = b"N0X\x02\x00\x00\x00\x00{0" + payload(marker)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.safetensors", body)
        z.writestr("README.md", b"weights")
    return out.getvalue()


def polyglot_in_archive_bin(torch, marker: Path) -> bytes:
    """A plain zip holding pytorch_model.bin: a pickle starting BININT2 ... POP."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("pytorch_model.bin", b"M\x01\x000" + payload(marker))
    return out.getvalue()


# -- .pt2 -----------------------------------------------------------------------------------------
def _pt2_parts(torch, dynamic: bool = False) -> list[tuple[str, bytes]]:
    """The records of ``torch.export.save`` of a tiny network (exported once per process)."""
    key = ("pt2", dynamic)
    if key not in _CACHE:
        _CACHE[key] = _export_parts(torch, dynamic)
    return list(_CACHE[key])


_CACHE: dict[tuple[str, bool], list[tuple[str, bytes]]] = {}


def _export_parts(torch, dynamic: bool) -> list[tuple[str, bytes]]:
    m = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    shapes = {"input": {0: torch.export.Dim("batch", min=2, max=64)}} if dynamic else None
    ep = torch.export.export(m, (x,), dynamic_shapes=shapes)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def _set_json(parts, name_end: str, edit) -> list[tuple[str, bytes]]:
    out = []
    for n, d in parts:
        if n.endswith(name_end):
            d = json.dumps(edit(json.loads(d))).encode()
        out.append((n, d))
    return out


def pt2_opaque_constant(torch, marker: Path) -> bytes:
    """A constant stored as an opaque object: torch.export.load calls pickle.loads on it."""
    parts = _pt2_parts(torch)
    root = parts[0][0].split("/", 1)[0]

    def edit(cfg):
        cfg["config"]["hook"] = {"path_name": "opaque_obj_0", "is_param": False,
                                 "use_pickle": True, "tensor_meta": None}
        return cfg
    parts = _set_json(parts, "data/constants/model_constants_config.json", edit)
    parts.insert(1, (f"{root}/data/constants/opaque_obj_0", payload(marker)))
    return simple_zip(parts)


def pt2_pickled_weight(torch, marker: Path) -> bytes:
    """A weight marked use_pickle: torch.load(weights_only=False) of a payload."""
    parts = _pt2_parts(torch)
    root = parts[0][0].split("/", 1)[0]
    payload = io.BytesIO()
    torch.save({"x": Reduce(os.system, f"touch {marker}")}, payload)

    def edit(cfg):
        first = next(iter(cfg["config"]))
        cfg["config"][first]["use_pickle"] = True
        cfg["config"][first]["path_name"] = "weight_pickled"
        return cfg
    parts = _set_json(parts, "data/weights/model_weights_config.json", edit)
    parts.insert(1, (f"{root}/data/weights/weight_pickled", payload.getvalue()))
    return simple_zip(parts)


def pt2_malformed_config(torch, marker: Path) -> bytes:
    """An opaque payload beside a config entry whose tensor_meta is null and one that is
    not even an object: the reader must keep going and still scan the pickle."""
    parts = _pt2_parts(torch)
    root = parts[0][0].split("/", 1)[0]

    def weights(cfg):
        first = next(iter(cfg["config"]))
        cfg["config"][first]["tensor_meta"] = None
        cfg["config"]["junk"] = [1, 2]
        return cfg

    def consts(cfg):
        cfg["config"]["hook"] = {"path_name": "opaque_obj_0", "use_pickle": True,
                                 "tensor_meta": {"sizes": "nope"}}
        return cfg
    parts = _set_json(parts, "data/weights/model_weights_config.json", weights)
    parts = _set_json(parts, "data/constants/model_constants_config.json", consts)
    parts.insert(1, (f"{root}/data/constants/opaque_obj_0", payload(marker)))
    return simple_zip(parts)


def pt2_sample_inputs(torch, marker: Path) -> bytes:
    """Sample inputs that fail weights_only: torch.export.load retries weights_only=False."""
    parts = _pt2_parts(torch)
    payload = io.BytesIO()
    torch.save(((Reduce(os.system, f"touch {marker}"),), {}), payload)
    return simple_zip([(n, payload.getvalue() if "sample_inputs" in n else d)
                       for n, d in parts])


def tar_and_pickle(marker: Path) -> bytes:
    """A benign pre-0.4 tar checkpoint whose first header is also the start of a pickle
    (BINBYTES swallows the rest of the header; the first member's data, POP then the
    payload, goes on with the stream). ``torch.load(path)`` reads the tar;
    ``torch.load(io.BytesIO(data))`` never tries tar and runs the payload."""
    import pickle
    import tarfile

    members = [("A", b"0" + payload(marker)),
               ("storages", pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)),
               ("tensors", pickle.dumps(0, protocol=2)),
               ("pickle", pickle.dumps({"a": 1}, protocol=2))]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = bytearray(out.getvalue())
    start = b"\x80\x02B" + struct.pack("<I", 512 - 7)
    raw[0:100] = start + bytes(100 - len(start))
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw[0:512])
    return bytes(raw)


def pt2_sample_inputs_tar(torch, marker: Path) -> bytes:
    """Sample inputs that are a tar checkpoint to a reader of files and a payload to
    ``torch.load(io.BytesIO(...))``, which is how torch.export.load reads them."""
    bytes_ = tar_and_pickle(marker)
    return simple_zip([(n, bytes_ if "sample_inputs" in n else d)
                       for n, d in _pt2_parts(torch)])


def pt2_native_code(torch, marker: Path) -> bytes:
    """An AOTInductor package: compiled code that torch.export.load loads and runs."""
    parts = _pt2_parts(torch)
    root = parts[0][0].split("/", 1)[0]
    parts.insert(1, (f"{root}/data/aotinductor/model/model.wrapper.so",
                     b"\x7fELF\x02\x01\x01" + b"\0" * 64))
    return simple_zip(parts)


def pt2_sympy_expression(torch, marker: Path) -> bytes:
    """A symbolic size whose expression sympy evaluates: Python code run at load."""
    parts = _pt2_parts(torch, dynamic=True)
    code = f"__import__('os').system('touch {marker}')"

    def edit(model):
        text = json.dumps(model)
        # the first symbolic size (Symbol('s..', ...)) becomes the payload
        at = text.index('"expr_str": "') + len('"expr_str": ')
        end = text.index('", "', at) + 1
        return json.loads(text[:at] + json.dumps(code) + text[end:])
    return simple_zip(_set_json(parts, "models/model.json", edit))


def pt2_legacy_layout(torch, marker: Path, behind: bool = False, legacy: bool = False
                      ) -> bytes:
    """The layout torch.export.load falls back to, read with Python's zipfile when torch's
    reader fails (here: the first record is not in a folder): its .pt files go through
    torch.load with a weights_only=False retry. ``behind``: after a whole torch.save
    archive (data.pkl and all), which made the file read as that archive alone;
    ``legacy``: the payload in torch.save's older, non-zip stream."""
    from torch._export.serde.schema import SCHEMA_VERSION

    parts = dict(_pt2_parts(torch))
    model = next(d for n, d in parts.items() if n.endswith("models/model.json"))
    inputs = next(d for n, d in parts.items() if n.endswith("sample_inputs/model.pt"))
    weights = io.BytesIO()
    torch.save({}, weights)
    payload = io.BytesIO()
    torch.save({"c": Reduce(os.system, f"touch {marker}")}, payload,
               _use_new_zipfile_serialization=not legacy)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        if behind:
            plain = io.BytesIO()
            torch.save({"w": torch.zeros(2)}, plain)
            with zipfile.ZipFile(io.BytesIO(plain.getvalue())) as p:
                for n in p.namelist():
                    z.writestr(n, p.read(n))
        z.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        z.writestr("serialized_exported_program.json", model)
        z.writestr("serialized_state_dict.pt", weights.getvalue())
        z.writestr("serialized_constants.pt", payload.getvalue())
        z.writestr("serialized_example_inputs.pt", inputs)
    return out.getvalue()


def pt2_with_data_pkl(torch, marker: Path) -> bytes:
    """A .pt2 that also holds a data.pkl: torch.export.load reads the program, torch.load
    of the same file unpickles data.pkl."""
    parts = _pt2_parts(torch)
    root = parts[0][0].split("/", 1)[0]
    parts.insert(1, (f"{root}/data.pkl", payload(marker)))
    return simple_zip(parts)


# (filename, builder, expected verdict, a finding the scan must report, what it does)
SAMPLES = [
    ("zip_case_renamed.pt", case_renamed_data_pkl, "dangerous", "name-case",
     "data.pkl stored as Data.PKL: torch's zip lookups ignore case"),
    ("zip_case_shadow.pt", case_shadowed_data_pkl, "dangerous", "duplicate-member",
     "data.pkl and DATA.PKL: torch reads the payload, zipfile the benign one"),
    ("zip_second_directory.pt", second_central_directory, "dangerous", "zip-mismatch",
     "the end record points torch at a second central directory"),
    ("zip64_locator.pt", zip64_locator_elsewhere, "dangerous", "zip-mismatch",
     "the zip64 locator points torch at a second zip64 end record"),
    ("zip_shifted_offsets.pt", shifted_offsets, "dangerous", "zip-mismatch",
     "zipfile shifts offsets by 'prepended data', torch does not"),
    ("zip_short_count.pt", short_entry_count, "dangerous", "zip-mismatch",
     "the end record's count hides the last record from torch"),
    ("zip_trailing_signature.pt", trailing_end_signature, "dangerous", "zip-mismatch",
     "an end-record signature after the end: zipfile refuses, torch reads"),
    ("zip_local_name.pt", local_name_differs, "dangerous", "name-mismatch",
     "data.pkl's local header names another file"),
    ("zip_deflated_bad_crc.pt", crc_and_deflate, "dangerous", "crc-mismatch",
     "a deflated data.pkl with a wrong CRC"),
    ("zip_pickle_binint_pop.pt", pickle_not_starting_with_proto, "dangerous",
     "dangerous-import", "a pickle in notes.txt that starts with BININT2 ... POP"),
    ("zip_debug_pkl.pt", debug_pkl_payload, "dangerous", "dangerous-import",
     "a payload in a .debug_pkl record"),
    ("archive_safetensors_polyglot.zip", safetensors_polyglot, "dangerous",
     "dangerous-import", "a member that passes the safetensors sniff and is a pickle"),
    ("archive_bin_binint_pop.zip", polyglot_in_archive_bin, "dangerous", "dangerous-import",
     "pytorch_model.bin: a pickle starting BININT2 ... POP"),
    ("pt2_opaque_constant.pt2", pt2_opaque_constant, "dangerous", "dangerous-import",
     "an opaque constant: pickle.loads at torch.export.load"),
    ("pt2_pickled_weight.pt2", pt2_pickled_weight, "dangerous", "dangerous-import",
     "a use_pickle weight: torch.load(weights_only=False)"),
    ("pt2_malformed_config.pt2", pt2_malformed_config, "dangerous", "dangerous-import",
     "null tensor_meta and wrong types beside an opaque payload"),
    ("pt2_sample_inputs.pt2", pt2_sample_inputs, "dangerous", "dangerous-import",
     "sample inputs loaded with the weights_only=False fallback"),
    ("pt2_sample_inputs_tar.pt2", pt2_sample_inputs_tar, "dangerous", "dangerous-import",
     "sample inputs that are a tar to a file reader, a pickle to torch.load(BytesIO)"),
    ("pt2_native_code.pt2", pt2_native_code, "needs-trust", "native-code",
     "an AOTInductor shared library"),
    ("pt2_sympy_expression.pt2", pt2_sympy_expression, "dangerous", "code-in-expression",
     "a symbolic size that sympy evaluates as Python"),
    ("pt2_legacy_layout.pt2", pt2_legacy_layout, "dangerous", "dangerous-import",
     "the older layout torch.export.load falls back to"),
    ("pt2_with_data_pkl.pt2", pt2_with_data_pkl, "dangerous", "dangerous-import",
     "a data.pkl inside a .pt2, run by torch.load"),
    ("pt2_legacy_behind_torch_zip.pt2",
     lambda torch, marker: pt2_legacy_layout(torch, marker, behind=True), "dangerous",
     "dangerous-import", "the older layout after a torch.save archive (was 'safe')"),
    ("pt2_legacy_stream_behind_torch_zip.pt2",
     lambda torch, marker: pt2_legacy_layout(torch, marker, behind=True, legacy=True),
     "dangerous", "dangerous-import",
     "the same with the payload in torch.save's non-zip stream (was 'safe')"),
]

# samples whose payload the real loader runs: (filename, loader) for the child-process proof
LIVE = {
    "zip_case_renamed.pt": "torch.load",
    "zip_case_shadow.pt": "torch.load",
    "zip_second_directory.pt": "torch.load",
    "zip64_locator.pt": "torch.load",
    "zip_shifted_offsets.pt": "torch.load",
    "zip_short_count.pt": "torch.load",
    "zip_trailing_signature.pt": "torch.load",
    "zip_local_name.pt": "torch.load",
    "zip_deflated_bad_crc.pt": "torch.load",
    "pt2_opaque_constant.pt2": "torch.export.load",
    "pt2_pickled_weight.pt2": "torch.export.load",
    "pt2_sample_inputs.pt2": "torch.export.load",
    "pt2_sample_inputs_tar.pt2": "torch.export.load",
    "pt2_sympy_expression.pt2": "torch.export.load",
    "pt2_legacy_layout.pt2": "torch.export.load",
    "pt2_legacy_behind_torch_zip.pt2": "torch.export.load",
    "pt2_legacy_stream_behind_torch_zip.pt2": "torch.export.load",
    "pt2_with_data_pkl.pt2": "torch.load",
}
