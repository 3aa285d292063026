"""Tar archives as editable members, and mutations that keep every header's checksum valid.

A tar header with a wrong checksum ends ``tarfile``'s listing, so byte flips seldom get
past the first header. Here each member is written with ``tarfile``'s own header code
(V7, ustar, GNU or PAX) and then patched where a mutation wants it (a size field in
base-256, a link type, a PAX record), with the checksum recomputed. The torch < 0.4
format's members (``storages``, ``tensors``, ``pickle``) are also split into their
records, so counts, element counts, ndim, sizes and strides can be changed one by one.
"""

from __future__ import annotations

import io
import pickletools
import random
import struct
import tarfile
from dataclasses import dataclass, field, replace

import payloads
import zip_mutator

BLOCK = 512
FORMATS = ("ustar", "gnu", "pax", "v7")
_FMT = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT,
        "v7": tarfile.USTAR_FORMAT}


@dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    fmt: str = "pax"
    size: int | None = None  # the size the header declares; None: len(data)
    size_field: bytes | None = None  # raw 12 bytes for the size field (base-256, junk)
    pax: dict[str, str] = field(default_factory=dict)
    bad_checksum: bool = False


@dataclass
class Tar:
    members: list[Member]
    end: bytes = b"\0" * (2 * BLOCK)


def parse(data: bytes) -> Tar | None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = []
            for m in tar.getmembers():
                body = b""
                if m.isfile():
                    f = tar.extractfile(m)
                    body = f.read() if f else b""
                members.append(Member(m.name, body, m.type, m.linkname))
    except Exception:  # whatever tarfile raises on a damaged archive (OverflowError too)
        return None
    return Tar(members) if members else None


def _checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % (sum(header) & 0o777777)


def header(m: Member) -> bytes:
    info = tarfile.TarInfo(m.name)
    info.type = m.type
    info.linkname = m.linkname
    info.size = len(m.data) if m.size is None else m.size
    info.mode = 0o644
    info.pax_headers = dict(m.pax)
    size_ok = 0 <= info.size < 8 ** 11
    if not size_ok:
        info.size = 0
    try:
        buf = bytearray(info.tobuf(_FMT[m.fmt], "utf-8", "surrogateescape"))
    except (ValueError, UnicodeError):  # a name ustar cannot hold: GNU can
        buf = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
    main = bytearray(buf[-BLOCK:])
    if m.size_field is not None:
        main[124:136] = m.size_field[:12].ljust(12, b"\0")
    elif not size_ok:  # GNU base-256: a negative or huge size
        main[124:136] = (b"\xff" if m.size < 0 else b"\x80") + \
            (m.size % (1 << 88)).to_bytes(11, "big")
    if m.fmt == "v7":
        main[257:265] = b"\0" * 8
    _checksum(main)
    if m.bad_checksum:
        main[148] = ord("7") if main[148] != ord("7") else ord("6")
    return bytes(buf[:-BLOCK] + main)


def build(t: Tar) -> bytes:
    out = bytearray()
    for m in t.members:
        out += header(m)
        out += m.data + b"\0" * (-len(m.data) % BLOCK)
    return bytes(out + t.end)


# -- torch < 0.4: the records inside the members -----------------------------------------
def pickle_end(data: bytes, pos: int) -> int:
    """Where the pickle starting at ``pos`` ends (opcodes are read, never run)."""
    stream = io.BytesIO(data)
    stream.seek(pos)
    for op, _arg, at in pickletools.genops(stream):
        if op.name == "STOP":
            return at + 1
    raise ValueError("no STOP")


@dataclass
class Storage:
    args: bytes  # pickled (key, location, storage type)
    numel: int
    data: bytes


@dataclass
class Tensor:
    args: bytes  # pickled (key, storage key, tensor type)
    ndim: int
    sizes: list[int]
    strides: list[int]
    offset: int


def split_storages(data: bytes) -> tuple[bytes, list[Storage], bytes]:
    """(count pickle, storages, the rest: the storage views pickle)."""
    end = pickle_end(data, 0)
    count, pos, out = _first_int(data[:end]), end, []
    for _ in range(count):
        end = pickle_end(data, pos)
        args = data[pos:end]
        (numel,) = struct.unpack_from("<q", data, end)
        item = 8 if b"Double" in args or b"Long" in args else 4 if b"Float" in args else 1
        start = end + 8
        out.append(Storage(args, numel, data[start:start + numel * item]))
        pos = start + numel * item
    return data[:pickle_end(data, 0)], out, data[pos:]


def join_storages(count: bytes, storages: list[Storage], rest: bytes) -> bytes:
    return count + b"".join(s.args + struct.pack("<q", s.numel) + s.data for s in storages) \
        + rest


def split_tensors(data: bytes) -> tuple[bytes, list[Tensor], bytes]:
    end = pickle_end(data, 0)
    count, pos, out = _first_int(data[:end]), end, []
    for _ in range(count):
        end = pickle_end(data, pos)
        (ndim,) = struct.unpack_from("<i", data, end)
        sizes = list(struct.unpack_from(f"<{ndim}q", data, end + 8))
        strides = list(struct.unpack_from(f"<{ndim}q", data, end + 8 + 8 * ndim))
        (offset,) = struct.unpack_from("<q", data, end + 8 + 16 * ndim)
        out.append(Tensor(data[pos:end], ndim, sizes, strides, offset))
        pos = end + 16 + 16 * ndim
    return data[:pickle_end(data, 0)], out, data[pos:]


def join_tensors(count: bytes, tensors: list[Tensor], rest: bytes) -> bytes:
    out = bytearray(count)
    for t in tensors:
        out += t.args + struct.pack("<ii", t.ndim, 0)
        for v in (*t.sizes, *t.strides, t.offset):
            out += struct.pack("<q", max(-(1 << 63), min(v, (1 << 63) - 1)))
    return bytes(out + rest)


def _first_int(stream: bytes) -> int:
    for op, arg, _at in pickletools.genops(io.BytesIO(stream)):
        if isinstance(arg, int) and op.name != "PROTO":
            return arg
    raise ValueError("no count")


def int_pickle(n: int) -> bytes:
    return b"\x80\x02\x8a" + bytes([8]) + n.to_bytes(8, "little", signed=True) + b"."


HUGE = (-1, 0, 1, 63, 64, 65, 1000, 1 << 20, 1 << 31, (1 << 31) - 1, 1 << 40, (1 << 62),
        (1 << 63) - 1, -(1 << 63))


def _torch_records(rng: random.Random, t: Tar) -> None:
    by_name = {m.name: m for m in t.members}
    choice = rng.randrange(3)
    try:
        if choice == 0 and "storages" in by_name:
            m = by_name["storages"]
            count, storages, rest = split_storages(m.data)
            what = rng.randrange(5)
            if what == 0:
                count = int_pickle(rng.choice(HUGE))
            elif what == 1 and storages:
                rng.choice(storages).numel = rng.choice(HUGE)
            elif what == 2 and storages:  # a storage type that is no storage
                s = rng.choice(storages)
                s.args = s.args.replace(b"FloatStorage", rng.choice(
                    (b"HalfStorage", b"ByteStorage", b"NoStorage", b"system")))
            elif what == 3:
                rest = payloads.payload_pickle(rng) if rng.random() < 0.5 else (
                    b"\x80\x02]q\x00(K\x05K\x00" + int_pickle(rng.choice(HUGE))[3:12]
                    + b"K\x02tq\x01a.")
            elif storages:
                storages.append(replace(rng.choice(storages)))
            m.data = join_storages(count, storages, rest)
        elif choice == 1 and "tensors" in by_name:
            m = by_name["tensors"]
            count, tensors, rest = split_tensors(m.data)
            what = rng.randrange(4)
            if what == 0:
                count = int_pickle(rng.choice(HUGE))
            elif tensors:
                x = rng.choice(tensors)
                if what == 1:
                    x.ndim = rng.choice((-1, 0, 65, 1000, 1 << 30, x.ndim + 1))
                elif what == 2:
                    seq = x.sizes if rng.random() < 0.5 else x.strides
                    if seq:
                        seq[rng.randrange(len(seq))] = rng.choice(HUGE)
                else:
                    x.offset = rng.choice(HUGE)
            m.data = join_tensors(count, tensors, rest)
        elif "pickle" in by_name:
            m = by_name["pickle"]
            m.data = rng.choice((
                payloads.payload_pickle(rng),
                m.data.replace(b"X\x01\x00\x00\x001", b"X\x01\x00\x00\x009"),  # unknown id
                m.data.replace(b"X\x01\x00\x00\x001Q", b"K\x01Q"),  # an int id
                payloads.odd_prefix(rng, m.data),
            ))
    except (ValueError, struct.error, IndexError):
        return


# -- mutations ---------------------------------------------------------------------------
def m_format(rng: random.Random, t: Tar) -> None:
    fmt = rng.choice(FORMATS)
    for i, m in enumerate(t.members):
        m.fmt = fmt if (fmt != "v7" or i or rng.random() < 0.2) else "ustar"


def m_link(rng: random.Random, t: Tar) -> None:
    """A member becomes a hard or symbolic link to a new one holding its (or a payload's)
    bytes: the loader follows links, a reader that lists regular files only may not."""
    m = rng.choice(t.members)
    target = rng.choice(("x", f"{m.name}.orig", "data/blob", m.name.upper(), "../outside",
                         "/etc/hostname", m.name))
    body = payloads.payload_pickle(rng) if rng.random() < 0.6 else m.data
    if target not in ("../outside", "/etc/hostname", m.name):
        t.members.insert(t.members.index(m), Member(target, body, fmt=m.fmt))
    m.type = rng.choice((tarfile.LNKTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE))
    m.linkname = target
    m.data = b"" if rng.random() < 0.8 else m.data


def m_size(rng: random.Random, t: Tar) -> None:
    m = rng.choice(t.members)
    n = len(m.data)
    choice = rng.randrange(3)
    if choice == 0:
        m.size = rng.choice((*HUGE, max(0, n - 1), n + 1, n + BLOCK, 8 ** 11 - 1, 8 ** 11))
    elif choice == 1:
        m.size_field = rng.choice((b"00000000000 ", b"7777777777\0", b"-1\0", b"1e3\0", b"",
                                   b"\x80" + (1 << 80).to_bytes(11, "big"), b"   12 ",
                                   b"\xff" * 12, b"0x10\0"))
    else:
        m.data = m.data[:rng.randrange(n + 1)]


def m_pax(rng: random.Random, t: Tar) -> None:
    m = rng.choice(t.members)
    m.fmt = "pax"
    others = [o.name for o in t.members if o is not m] or ["x"]
    key = rng.choice(("path", "size", "linkpath", "GNU.sparse.size", "hdrcharset", "uid",
                      "mtime", "comment"))
    value = {"path": rng.choice([*others, "pickle", "storages", "../x"]),
             "size": rng.choice(("-1", "1e9", "99999999999999999999", "0", "abc",
                                 str(len(m.data) + 1))),
             "linkpath": rng.choice(others),
             "GNU.sparse.size": "1000000",
             "hdrcharset": "BINARY",
             "uid": "-5",
             "mtime": "nan",
             "comment": "x" * rng.choice((1, 1000, 100000))}[key]
    m.pax[key] = value


def m_longname(rng: random.Random, t: Tar) -> None:
    m = rng.choice(t.members)
    m.fmt = rng.choice(("gnu", "pax"))
    m.name = "d/" * rng.randint(50, 300) + m.name


def m_duplicate(rng: random.Random, t: Tar) -> None:
    m = rng.choice(t.members)
    twin = replace(m, pax=dict(m.pax), data=payloads.payload_pickle(rng)
                   if rng.random() < 0.7 else m.data)
    t.members.insert(t.members.index(m) + rng.choice((0, 1)), twin)


def m_type(rng: random.Random, t: Tar) -> None:
    m = rng.choice(t.members)
    m.type = rng.choice((tarfile.DIRTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE,
                         tarfile.CONTTYPE, tarfile.AREGTYPE, b"Z", tarfile.XGLTYPE))


def m_content(rng: random.Random, t: Tar) -> None:
    m = rng.choice(t.members)
    choice = rng.randrange(5)
    if choice == 0:
        m.data = payloads.payload_pickle(rng)
    elif choice == 1:
        m.data = zip_mutator.torch_zip(rng, payloads.payload_pickle(rng))
    elif choice == 2:
        m.data = payloads.odd_prefix(rng, m.data)
    elif choice == 3:
        m.data = m.data + payloads.payload_pickle(rng)
    else:
        t.members.append(Member(rng.choice(("model.pt", "weights.pth", "a.pkl", "README",
                                            "sys_info")),
                                payloads.payload_pickle(rng), fmt=m.fmt))


def m_checksum(rng: random.Random, t: Tar) -> None:
    rng.choice(t.members).bad_checksum = True


def m_end(rng: random.Random, t: Tar) -> None:
    choice = rng.randrange(4)
    if choice == 0:
        t.end = rng.choice((b"", b"\0" * BLOCK, b"junk", b"\0" * 100))
    elif choice == 1:  # an end-of-archive block in the middle, members after it
        t.members.insert(rng.randrange(len(t.members) + 1),
                         Member("", b"", type=b"\0", fmt="v7", size_field=b"\0" * 12))
    elif choice == 2:
        rng.shuffle(t.members)
    elif len(t.members) > 1:
        t.members.remove(rng.choice(t.members))


MUTATIONS = (m_format, m_link, m_link, m_size, m_pax, m_longname, m_duplicate, m_type,
             m_content, m_checksum, m_end, _torch_records, _torch_records, _torch_records)


def mutate(rng: random.Random, data: bytes) -> bytes | None:
    t = parse(data)
    if t is None:
        return None
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        rng.choice(MUTATIONS)(rng, t)
    return build(t)


# -- seeds ---------------------------------------------------------------------------------
def torch_tar(values: list[float], view: bool = False) -> bytes:
    """A checkpoint in torch's pre-0.4 tar format: ``{"w": tensor(values)}`` as float32.

    Written by hand (torch has not written this format for years, but ``torch.load``
    still reads and runs it). ``view`` adds a storage view and a second tensor on it."""
    n = len(values)
    stype = b"ctorch\nFloatStorage\nq\x00"
    args = b"\x80\x02K\x00X\x03\x00\x00\x00cpu" + stype + b"\x87q\x01."
    views = b"\x80\x02]q\x00."
    if view:  # storage 2 = elements 1.. of storage 0
        views = b"\x80\x02]q\x00(K\x02K\x00K\x01K" + bytes([n - 1]) + b"ta."
    storages = (b"\x80\x02K\x01." + args + struct.pack("<q", n)
                + struct.pack(f"<{n}f", *values) + views)
    ttype = b"ctorch\nFloatTensor\nq\x00"
    tensors = [(1, 0, n, 0)] + ([(3, 2, n - 1, 0)] if view else [])
    tbody = b"\x80\x02K" + bytes([len(tensors)]) + b"."
    for key, skey, size, offset in tensors:
        tbody += (b"\x80\x02K" + bytes([key]) + b"K" + bytes([skey]) + ttype + b"\x87q\x01."
                  + struct.pack("<ii", 1, 0) + struct.pack("<qqq", size, 1, offset))
    main = b"\x80\x02}q\x00(X\x01\x00\x00\x00wX\x01\x00\x00\x001Q"
    if view:
        main += b"X\x01\x00\x00\x00vX\x01\x00\x00\x003Q"
    main += b"u."
    return build(Tar([Member("sys_info", b"\x80\x02}q\x00."), Member("storages", storages),
                      Member("tensors", tbody), Member("pickle", main)]))
