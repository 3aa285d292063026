"""Zip archives as a list of editable records, and mutations that keep them zips.

:func:`parse` turns a zip into :class:`Entry` records (its central directory read by
``zipfile``, each member's bytes taken from its local header) and :func:`build` writes
them back with every field under our control: a local name that differs from the
central one, sizes and CRCs that lie, offsets that point elsewhere, extra fields, data
descriptors, a second central directory, a zip64 locator. Byte flips almost never get
a file past ``zipfile``'s checks into the torch reader; these do.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from dataclasses import dataclass, field, replace

import payloads

STORED, DEFLATED = 0, 8
U32 = 0xFFFFFFFF


@dataclass
class Entry:
    name: bytes
    plain: bytes  # the member's content before compression
    method: int = STORED  # the method the headers declare
    encode: str = "stored"  # how the bytes are really written: stored | deflate
    flags: int = 0
    local_name: bytes | None = None  # None: the central directory's name
    crc: int | None = None  # None: the CRC of ``plain``
    csize: int | None = None  # None: the length of the written bytes
    usize: int | None = None  # None: the length of ``plain``
    local_extra: bytes = b""
    central_extra: bytes = b""
    offset: int | None = None  # central directory's offset; None: where the header is
    offset_delta: int = 0
    points_to: Entry | None = None  # the directory row gives this record's header offset
    descriptor: bool = False  # a data descriptor after the bytes (flag bit 3)
    align: int = 64  # torch pads stored members so their data starts on 64 bytes
    in_central: bool = True  # False: only a local header (unlisted bytes)


@dataclass
class Zip:
    entries: list[Entry]
    prefix: bytes = b""  # bytes before the first local header (a self-extractor stub)
    comment: bytes = b""
    count_delta: int = 0  # EOCD entry counts that lie
    cd_offset_delta: int = 0
    zip64: str | None = None  # None | "good" | "bad-offset" | "bad-disk" | "bad-count"
    second_cd: list[Entry] | None = None  # another directory (and EOCD) after the first
    trailing: bytes = b""
    extra_locals: list[Entry] = field(default_factory=list)  # unlisted local records


def parse(data: bytes) -> Zip | None:
    """The records of a readable zip, or None."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except Exception:  # whatever zipfile raises on a damaged archive
        return None
    entries = []
    for info in infos:
        try:
            plain = zf.read(info)
        except Exception:  # a damaged member: keep its stored bytes as they are
            h = info.header_offset
            if h < 0 or h + 30 > len(data):
                continue
            n, m = struct.unpack_from("<HH", data, h + 26)
            start = h + 30 + n + m
            plain = data[start:start + info.compress_size]
        entries.append(Entry(
            name=info.orig_filename.encode("utf-8", "surrogateescape"), plain=plain,
            method=info.compress_type if info.compress_type in (STORED, DEFLATED) else STORED,
            encode="deflate" if info.compress_type == DEFLATED else "stored",
            flags=info.flag_bits & 0x800))
    return Zip(entries, comment=zf.comment)


def _encoded(e: Entry) -> bytes:
    if e.encode == "deflate":
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        return c.compress(e.plain) + c.flush()
    return e.plain


def _local(out: bytearray, e: Entry) -> tuple[int, int, int, int]:
    """Write ``e``'s local header and bytes; (offset, crc, csize, usize) for the directory."""
    written = _encoded(e)
    crc = zlib.crc32(e.plain) if e.crc is None else e.crc
    csize = len(written) if e.csize is None else e.csize
    usize = len(e.plain) if e.usize is None else e.usize
    name = (e.name if e.local_name is None else e.local_name)[:0xFFFF]
    extra = e.local_extra[:0xFFFF - 68]
    flags = e.flags | (0x8 if e.descriptor else 0)
    if e.align and e.encode == "stored":
        # torch's writer pads with an extra field ('FB') so the data is aligned
        at = len(out) + 30 + len(name) + len(extra) + 4
        pad = -at % e.align
        extra += b"FB" + struct.pack("<H", pad) + b"Z" * pad
    offset = len(out)
    hcrc, hc, hu = (0, 0, 0) if e.descriptor else (crc, csize, usize)
    out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, e.method, 0, 0x21,
                       hcrc & U32, min(hc, U32) & U32, min(hu, U32) & U32, len(name),
                       len(extra))
    out += name + extra + written
    if e.descriptor:
        out += struct.pack("<4sIII", b"PK\x07\x08", crc & U32, min(csize, U32) & U32,
                           min(usize, U32) & U32)
    return offset, crc, csize, usize


def _central(e: Entry, offset: int, crc: int, csize: int, usize: int,
             offsets: dict[int, int]) -> bytes:
    if e.points_to is not None and id(e.points_to) in offsets:
        offset = offsets[id(e.points_to)]
    at = e.offset if e.offset is not None else offset + e.offset_delta
    flags = e.flags | (0x8 if e.descriptor else 0)
    return struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, flags, e.method, 0,
                       0x21, crc & U32, min(csize, U32) & U32, min(usize, U32) & U32,
                       len(e.name[:0xFFFF]), len(e.central_extra[:0xFFFF]), 0, 0, 0, 0,
                       min(max(at, 0), U32)) + e.name[:0xFFFF] + e.central_extra[:0xFFFF]


def _directory(out: bytearray, z: Zip, rows: list[bytes]) -> None:
    start = len(out)
    for row in rows:
        out += row
    size = len(out) - start
    count = max(0, min(len(rows) + z.count_delta, 0xFFFF))
    cd_at = max(0, start + z.cd_offset_delta)
    if z.zip64:
        rec_at = len(out)
        disk = 1 if z.zip64 == "bad-disk" else 0
        n64 = count + (1000 if z.zip64 == "bad-count" else 0)
        out += struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, disk, disk, n64, n64,
                           size, cd_at)
        loc = rec_at + (7 if z.zip64 == "bad-offset" else 0)
        out += struct.pack("<4sIQI", b"PK\x06\x07", 0, loc, 1)
        out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, U32, U32,
                           len(z.comment))
    else:
        out += struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, size,
                           min(cd_at, U32), len(z.comment))
    out += z.comment


def build(z: Zip) -> bytes:
    out = bytearray(z.prefix)
    offsets: dict[int, int] = {}
    written = [(e, _local(out, e)) for e in z.entries]
    for e in z.extra_locals:
        offsets[id(e)] = _local(out, e)[0]
    offsets.update((id(e), w[0]) for e, w in written)
    _directory(out, z, [_central(e, *w, offsets) for e, w in written if e.in_central])
    if z.second_cd is not None:
        again = [(e, _local(out, e)) for e in z.second_cd]
        offsets.update((id(e), w[0]) for e, w in again)
        _directory(out, replace(z, zip64=None), [_central(e, *w, offsets) for e, w in again])
    out += z.trailing
    return bytes(out)


# -- mutations ---------------------------------------------------------------------------
INTERESTING = (0, 1, 2, 7, 8, 63, 64, 65, 255, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF,
               0xFFFFFFFE, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1)


def _pick(rng: random.Random, z: Zip) -> Entry | None:
    return rng.choice(z.entries) if z.entries else None


def _main_pickle(z: Zip) -> Entry | None:
    for e in z.entries:
        if e.name.endswith(b"data.pkl"):
            return e
    return None


def _pickle_entry(rng: random.Random, z: Zip) -> Entry | None:
    """data.pkl most of the time, else any .pkl or any member."""
    pkls = [e for e in z.entries if e.name.endswith(b".pkl")]
    if pkls and rng.random() < 0.8:
        main = _main_pickle(z)
        return main if main is not None and rng.random() < 0.6 else rng.choice(pkls)
    return _pick(rng, z)


def _root(z: Zip) -> bytes:
    for e in z.entries:
        if b"/" in e.name:
            return e.name.split(b"/", 1)[0] + b"/"
    return b"archive/"


def _case(rng: random.Random, name: bytes) -> bytes:
    if not name:
        return b"A"
    i = rng.randrange(len(name))
    j = min(len(name), i + rng.randint(1, 8))
    part = name[i:j]
    return name[:i] + (part.upper() if part != part.upper() else part.lower()) + name[j:]


def m_rename(rng: random.Random, z: Zip) -> None:
    e = _pickle_entry(rng, z)
    if e is None:
        return
    others = [o.name for o in z.entries if o is not e]
    choice = rng.randrange(10)
    if choice == 0:
        e.name = _case(rng, e.name)
    elif choice == 1 and others:
        e.name = rng.choice(others)  # a duplicate name
    elif choice == 2:
        e.name = b"../" + e.name
    elif choice == 3:
        e.name = b"/" + e.name
    elif choice == 4:
        e.name = e.name.replace(b"/", b"\\")
    elif choice == 5:
        e.name = _root(z).upper() + e.name.split(b"/", 1)[-1]
    elif choice == 6:
        e.name = b""
    elif choice == 7:
        e.name = e.name + b"/"
    elif choice == 8:
        e.name = bytes([0xC3, 0x28]) + e.name  # not UTF-8
        e.flags ^= 0x800 if rng.random() < 0.5 else 0
    else:
        e.name = e.name * rng.randint(2, 200)


def m_local_name(rng: random.Random, z: Zip) -> None:
    e = _pickle_entry(rng, z)
    if e is not None:
        e.local_name = rng.choice((_case(rng, e.name), e.name[:-1] + b"x", b"", e.name + b"\0",
                                   _pick(rng, z).name))


def m_duplicate(rng: random.Random, z: Zip) -> None:
    e = _pickle_entry(rng, z)
    if e is None:
        return
    twin = replace(e, plain=payloads.payload_pickle(rng) if rng.random() < 0.7 else e.plain)
    if rng.random() < 0.3:
        twin.name = _case(rng, e.name)
    z.entries.insert(z.entries.index(e) + rng.choice((0, 1)), twin)


def m_case_twin(rng: random.Random, z: Zip) -> None:
    """A record whose name differs from a .pkl member's only in case, holding a payload,
    just before or after it: miniz (torch's zip reader) looks names up ignoring case."""
    e = _pickle_entry(rng, z)
    if e is None:
        return
    stem, dot, ext = e.name.rpartition(b".")
    name = rng.choice((stem + dot + ext.upper(), _case(rng, e.name), e.name.upper(),
                       stem.upper() + dot + ext))
    twin = Entry(name, rng.choice((payloads.payload_pickle(rng),
                                   payloads.odd_prefix(rng, payloads.payload_pickle(rng)))))
    z.entries.insert(z.entries.index(e) + rng.choice((0, 1)), twin)


def m_delete(rng: random.Random, z: Zip) -> None:
    if len(z.entries) > 1:
        z.entries.remove(_pick(rng, z))


def m_reorder(rng: random.Random, z: Zip) -> None:
    rng.shuffle(z.entries)


def m_offset(rng: random.Random, z: Zip) -> None:
    e = _pick(rng, z)
    if e is None:
        return
    choice = rng.randrange(4)
    if choice == 0:
        e.offset_delta = rng.choice((-30, -4, -1, 1, 4, 30, 64))
    elif choice == 1:
        e.offset = rng.choice(INTERESTING)
    elif choice == 2:  # two directory rows, one local record
        e.points_to = _pick(rng, z)
    else:  # a row points at a local record the directory does not list: a payload
        hidden = Entry(rng.choice((e.name, _case(rng, e.name))), payloads.payload_pickle(rng),
                       in_central=False)
        z.extra_locals.append(hidden)
        e.points_to = hidden


def m_sizes(rng: random.Random, z: Zip) -> None:
    e = _pick(rng, z)
    if e is None:
        return
    n = len(e.plain)
    value = rng.choice((*INTERESTING, max(0, n - 1), n + 1, n * 2, n // 2))
    which = rng.randrange(3)
    if which == 0:
        e.csize = value
    elif which == 1:
        e.usize = value
    else:
        e.csize = e.usize = value


def m_method(rng: random.Random, z: Zip) -> None:
    e = _pick(rng, z)
    if e is None:
        return
    choice = rng.randrange(5)
    if choice == 0:  # really deflated
        e.method, e.encode = DEFLATED, "deflate"
    elif choice == 1:  # declared deflated, written stored
        e.method, e.encode = DEFLATED, "stored"
    elif choice == 2:  # declared stored, written deflated
        e.method, e.encode = STORED, "deflate"
    else:
        e.method = rng.choice((1, 6, 9, 12, 14, 93, 95, 98, 99, 0xFFFF))


def m_flags(rng: random.Random, z: Zip) -> None:
    e = _pick(rng, z)
    if e is None:
        return
    choice = rng.randrange(4)
    if choice == 0:
        e.flags |= 0x1  # encrypted
    elif choice == 1:
        e.descriptor = True
    elif choice == 2:
        e.flags ^= 0x800  # UTF-8 names
    else:
        e.flags = rng.randrange(0x10000)


def m_extra(rng: random.Random, z: Zip) -> None:
    e = _pick(rng, z)
    if e is None:
        return
    choice = rng.randrange(5)
    if choice == 0:  # zip64 sizes that differ from the header's
        big = rng.choice(INTERESTING)
        e.central_extra = struct.pack("<HHQQ", 1, 16, big, big)
        e.csize = e.usize = U32
    elif choice == 1:  # zip64 with the offset too
        e.central_extra = struct.pack("<HHQQQ", 1, 24, len(e.plain), len(e.plain),
                                      rng.choice(INTERESTING))
        e.csize = e.usize = U32
        e.offset = U32
    elif choice == 2:  # a length that runs past the extra block
        e.central_extra = struct.pack("<HH", rng.randrange(0x10000), 0x200) + b"xx"
    elif choice == 3:
        e.local_extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
    else:  # an empty zip64 field where sizes are 0xffffffff
        e.central_extra = struct.pack("<HH", 1, 0)
        e.usize = U32


def m_crc(rng: random.Random, z: Zip) -> None:
    e = _pick(rng, z)
    if e is not None:
        e.crc = rng.randrange(1 << 32)


def m_content(rng: random.Random, z: Zip) -> None:
    """Member bytes: a payload pickle, a cut, an odd first opcode, another member's bytes."""
    e = _pickle_entry(rng, z)
    if e is None:
        return
    choice = rng.randrange(8)
    if choice == 0:
        e.plain = payloads.payload_pickle(rng)
    elif choice == 1:
        e.plain = e.plain[:rng.randrange(len(e.plain) + 1)]
    elif choice == 2:
        e.plain = payloads.odd_prefix(rng, e.plain)
    elif choice == 3:
        e.plain = e.plain + payloads.payload_pickle(rng)  # a second pickle after STOP
    elif choice == 4:
        e.plain = _pick(rng, z).plain
    elif choice == 5:  # a payload hidden in a storage record or another member
        target = _pick(rng, z)
        target.plain = payloads.payload_pickle(rng)
    elif choice == 6:  # a nested torch zip holding the payload
        e.plain = torch_zip(rng, payloads.payload_pickle(rng))
    elif choice == 7 and rng.random() < 0.5:  # a nested tar, itself mutated
        import tar_mutator  # imports this module

        nested = tar_mutator.torch_tar([1.0, 2.0])
        e.plain = tar_mutator.mutate(rng, nested) or nested
    else:
        e.plain = payloads.benign_pickle(rng)


def m_add_member(rng: random.Random, z: Zip) -> None:
    root = _root(z)
    name = rng.choice((b"extra.pkl", b"notes.txt", b"data/99", b"constants.pkl",
                       b"code/__torch__/x.py", b".data/serialization_id", b"x.debug_pkl",
                       b"../evil.pkl", b"model.pt", b"old.tar"))
    data = payloads.payload_pickle(rng) if rng.random() < 0.8 else payloads.benign_pickle(rng)
    if name == b"model.pt":
        data = torch_zip(rng, payloads.payload_pickle(rng))
    elif name == b"old.tar":  # a pre-0.4 checkpoint inside, itself mutated
        import tar_mutator  # imports this module

        nested = tar_mutator.torch_tar([1.0, 2.0])
        data = tar_mutator.mutate(rng, nested) or nested
    z.entries.insert(rng.randrange(len(z.entries) + 1),
                     Entry(name if name.startswith(b"..") else root + name, data))


def m_trailer(rng: random.Random, z: Zip) -> None:
    choice = rng.randrange(7)
    if choice == 0:
        z.count_delta = rng.choice((-1, 1, 1000, -1000))
    elif choice == 1:
        z.cd_offset_delta = rng.choice((-46, -1, 1, 22, 1 << 20))
    elif choice == 2:
        z.zip64 = rng.choice(("good", "bad-offset", "bad-disk", "bad-count"))
    elif choice == 3:  # a second directory: the same members, one of them changed
        second = [replace(e) for e in z.entries]
        if second:
            victim = rng.choice(second)
            victim.plain = payloads.payload_pickle(rng)
        z.second_cd = second
    elif choice == 4:
        z.comment = rng.choice((b"PK\x05\x06" + b"\0" * 18, b"x" * 300, b"\xff" * 7))
    elif choice == 5:
        z.prefix = rng.choice((b"#!/bin/sh\n", b"\0" * 64, b"PK\x03\x04"))
    else:
        z.trailing = rng.choice((b"\0", b"PK\x05\x06", b"junk" * 10))


MUTATIONS = (m_rename, m_local_name, m_duplicate, m_case_twin, m_delete, m_reorder, m_offset,
             m_sizes, m_method, m_flags, m_extra, m_crc, m_content, m_content, m_add_member,
             m_trailer)


def mutate(rng: random.Random, data: bytes) -> bytes | None:
    """A structure-aware mutant of the zip ``data``, or None if it is not a zip."""
    z = parse(data)
    if z is None:
        return None
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        rng.choice(MUTATIONS)(rng, z)
    return build(z)


def torch_zip(rng: random.Random, pickle_bytes: bytes, root: bytes = b"archive/") -> bytes:
    """A minimal ``torch.save`` archive whose data.pkl is ``pickle_bytes``."""
    entries = [Entry(root + b"data.pkl", pickle_bytes),
               Entry(root + b"byteorder", b"little"),
               Entry(root + b"version", b"3\n")]
    if rng.random() < 0.3:
        entries.append(Entry(root + b".data/serialization_id", b"0" * 40))
    return build(Zip(entries))
