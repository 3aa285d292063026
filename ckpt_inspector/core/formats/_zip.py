"""Zip archives read the way torch reads them, with every disagreement turned into a finding.

torch does not use Python's ``zipfile``: ``torch.load``, ``torch.jit.load`` and
``torch.export.load`` all go through ``caffe2/serialize/inline_container.cc``, which
is miniz. The two disagree on hostile files, and a scanner that lists an archive with
``zipfile`` can be shown one archive while torch loads another:

- miniz trusts the end record's central-directory offset (and the zip64 locator's
  offset); ``zipfile`` computes where the directory is from the end record's position
  and shifts every member by the difference ("prepended data"). A second central
  directory placed elsewhere is what torch reads.
- miniz takes the entry count from the end record; ``zipfile`` reads entries until the
  directory's byte size is used up.
- miniz finds records case-insensitively (ASCII), by a binary search over names sorted
  with a heap sort, so which of two duplicates wins depends on the sort; ``zipfile``
  keeps the last one of an exact name.
- miniz never checks CRCs (torch builds it with ``MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS``)
  nor the local header's name; ``zipfile`` refuses both.

:class:`Directory` is a small central-directory parser modelled line by line on miniz
3.0.2 (``mz_zip_reader_read_central_dir``, ``mz_zip_reader_locate_file_v2``,
``mz_zip_reader_extract_to_mem_no_alloc1``); :func:`audit` compares its listing with
``zipfile``'s and reports each difference. Readers take their records from the
:class:`Directory`, never from ``zipfile``.
"""

from __future__ import annotations

import encodings.cp437  # noqa: F401 - names without the UTF-8 flag are cp437; import it up front
import io
import struct
import warnings
import zipfile
import zlib
from typing import Any

from ckpt_inspector.core.findings import DANGEROUS, NEEDS_TRUST, Finding
from ckpt_inspector.core.tree import Checkpoint

LOCAL_SIG, CENTRAL_SIG, END_SIG = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
ZIP64_END_SIG, ZIP64_LOCATOR_SIG = b"PK\x06\x06", b"PK\x06\x07"
U32, U16 = 0xFFFFFFFF, 0xFFFF
STORED, DEFLATED = 0, 8
# miniz's getAllRecords copies names into a buffer of this size (MZ_ZIP_MAX_ARCHIVE_FILENAME_SIZE)
MAX_LISTED_NAME = 511
# general-purpose flags miniz refuses to extract: encrypted, compressed patch, strong encryption
_REFUSED_FLAGS = 0x1 | 0x20 | 0x40
_LOCAL_DIR_IS_MASKED = 0x2000
_INFLATE_CHUNK = 1 << 20
# Entry objects cost ~300 bytes each (and zipfile's listing as much again): a checkpoint
# with 100,000 tensors has 100,000 records; an archive claiming millions is refused.
MAX_RECORDS = 300_000


class ZipError(Exception):
    """torch's reader cannot open the archive (the message says why)."""


class MemberError(Exception):
    """A member's bytes cannot be read (the message says why)."""


def _decode_name(raw: bytes, flags: int) -> str:
    return raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")


class Entry:
    """One central-directory record as miniz's ``mz_zip_reader_file_stat`` reports it.

    Attribute names follow ``zipfile.ZipInfo`` (``filename``, ``file_size``,
    ``compress_size``, ``compress_type``, ``header_offset``, ``CRC``, ``flag_bits``), so
    code written for either reads both.
    """

    __slots__ = ("CRC", "compress_size", "compress_type", "external_attr", "file_size",
                 "filename", "flag_bits", "header_offset", "index", "problem", "raw_name")

    def __init__(self, index: int, raw_name: bytes, flags: int, method: int, crc: int,
                 comp: int, size: int, offset: int, external_attr: int = 0):
        self.index = index
        self.raw_name = raw_name
        self.filename = _decode_name(raw_name, flags)
        self.flag_bits = flags
        self.compress_type = method
        self.CRC = crc
        self.compress_size = comp
        self.file_size = size
        self.header_offset = offset
        self.external_attr = external_attr
        self.problem: str | None = None  # why miniz cannot give this record's bytes

    @property
    def is_dir(self) -> bool:
        """miniz's test: a name ending in ``/`` or the DOS directory attribute."""
        return self.raw_name.endswith(b"/") or bool(self.external_attr & 0x10)

    @property
    def listed_name(self) -> bytes:
        """The name as ``get_all_records`` returns it: a C string, cut at NUL and 511 bytes."""
        return self.raw_name[:MAX_LISTED_NAME].split(b"\0", 1)[0]

    def key(self) -> tuple[str, int, int, int, int]:
        """What must match between two listings for them to give the same bytes."""
        return (self.filename, self.header_offset, self.compress_size, self.file_size,
                self.compress_type)

    def __repr__(self) -> str:
        return f"Entry({self.filename!r} @{self.header_offset}, {self.file_size} bytes)"


# signature, version needed, flags, method, time+date as miniz reads "method" (32 bits:
# method | time << 16), crc, sizes, name/extra/comment lengths, disk, external attributes,
# local header offset
_CENTRAL = struct.Struct("<4s2xHHHH2xIIIHHHH2xII")


def _plain_extra(extra: bytes) -> bool:
    """Extra fields zipfile reads without complaint and without zip64 values."""
    pos = 0
    while len(extra) - pos >= 4:
        tp, ln = struct.unpack_from("<HH", extra, pos)
        if ln + 4 > len(extra) - pos or tp == 1:
            return False
        pos += 4 + ln
    return True


def _u16(raw: Any, at: int) -> int:
    return struct.unpack_from("<H", raw, at)[0]


def _u32(raw: Any, at: int) -> int:
    return struct.unpack_from("<I", raw, at)[0]


def _u64(raw: Any, at: int) -> int:
    return struct.unpack_from("<Q", raw, at)[0]


def find_end_record(raw: Any, size: int) -> int:
    """miniz's ``mz_zip_reader_locate_header_sig``: scanning back from the end in 4 KiB
    windows, the last end-record signature with at least 22 bytes after it, no further
    back than 64 KiB + 22."""
    if size < 22:
        raise ZipError("not a zip archive (too short)")
    cur = max(size - 4096, 0)
    while True:
        n = min(4096, size - cur)
        window = bytes(raw[cur:cur + n])
        end = min(n, size - cur - 22 + 4)
        i = window.rfind(END_SIG, 0, end) if end >= 4 else -1
        if i >= 0:
            return cur + i
        if cur == 0 or size - cur >= U16 + 22:
            raise ZipError("not a zip archive: no end-of-directory record where torch looks")
        cur = max(cur - (4096 - 3), 0)


class Directory:
    """The central directory as torch's miniz reads it.

    ``entries`` are in directory order (the order ``get_all_records`` lists them);
    :meth:`locate` finds a record the way ``mz_zip_reader_locate_file`` does, and
    :meth:`record` the way ``PyTorchStreamReader::getRecord`` does (under :attr:`root`).
    Raises :class:`ZipError` where miniz's ``mz_zip_reader_init`` fails.
    """

    def __init__(self, raw: Any, size: int | None = None):
        self.raw = raw
        self.size = len(raw) if size is None else size
        self.end_offset = find_end_record(raw, self.size)
        self.zip64 = False
        self.entries: list[Entry] = []
        self._read()
        self._by_lower: dict[bytes, Entry] | None = None
        self._sorted: list[int] | None = None
        self.case_duplicates: dict[bytes, list[Entry]] = {}
        self._index_names()
        self.root, self.root_problem = self._root()

    # -- mz_zip_reader_read_central_dir ---------------------------------------------------
    def _read(self) -> None:
        raw, size, eocd = self.raw, self.size, self.end_offset
        total = _u16(raw, eocd + 10)
        on_disk = _u16(raw, eocd + 8)
        this_disk = _u16(raw, eocd + 4)
        cdir_disk = _u16(raw, eocd + 6)
        cdir_size = _u32(raw, eocd + 12)
        cdir_ofs = _u32(raw, eocd + 16)
        z64 = None
        if eocd >= 20 + 56 and bytes(raw[eocd - 20:eocd - 16]) == ZIP64_LOCATOR_SIG:
            z64_ofs = _u64(raw, eocd - 20 + 8)
            if z64_ofs > size - 56:
                raise ZipError("the zip64 locator points past the end of the file")
            if bytes(raw[z64_ofs:z64_ofs + 4]) == ZIP64_END_SIG:
                self.zip64 = True
                z64 = z64_ofs
        self.zip64_end_offset = z64
        if z64 is not None:
            disks = _u32(raw, eocd - 20 + 16)
            if _u64(raw, z64 + 4) < 56 - 12:
                raise ZipError("damaged zip64 end record")
            if disks != 1:
                raise ZipError("multi-disk archives are not supported by torch")
            total64, on_disk64 = _u64(raw, z64 + 32), _u64(raw, z64 + 24)
            if total64 > U32 or on_disk64 > U32:
                raise ZipError("too many records for torch's zip reader")
            total, on_disk = total64, on_disk64
            size64 = _u64(raw, z64 + 40)
            if size64 > U32:
                raise ZipError("central directory too large for torch's zip reader")
            cdir_size = size64
            this_disk, cdir_disk = _u32(raw, z64 + 16), _u32(raw, z64 + 20)
            cdir_ofs = _u64(raw, z64 + 48)
        if total != on_disk:
            raise ZipError("multi-disk archives are not supported by torch")
        if (this_disk | cdir_disk) != 0 and (this_disk != 1 or cdir_disk != 1):
            raise ZipError("multi-disk archives are not supported by torch")
        if cdir_size < total * 46:
            raise ZipError("the central directory is smaller than its record count")
        if cdir_ofs + cdir_size > size:
            raise ZipError("the central directory runs past the end of the file")
        if total > MAX_RECORDS:
            raise ZipError(f"the archive claims {total:,} records, more than the "
                           f"{MAX_RECORDS:,} this reader lists")
        self.cdir_offset, self.cdir_size, self.count = cdir_ofs, cdir_size, total
        # the directory is parsed from one copy when it is of a sane size
        if cdir_size <= 64 << 20:
            cd, base = bytes(raw[cdir_ofs:cdir_ofs + cdir_size]), cdir_ofs
        else:
            cd, base = raw, 0
        p, n = cdir_ofs - base, cdir_size
        entries = self.entries
        unpack = _CENTRAL.unpack_from
        # whether Python's zipfile parses these same records the same way (see audit)
        plain = True
        for i in range(total):
            if n < 46:
                raise ZipError(f"central directory record {i} is damaged")
            (sig, version, flags, method, _time, crc, comp, usize, name_len, extra_len,
             comment_len, disk, eattr, lho) = unpack(cd, p)
            if sig != CENTRAL_SIG:
                raise ZipError(f"central directory record {i} is damaged")
            total_len = 46 + name_len + extra_len + comment_len
            if total_len > n:
                raise ZipError(f"central directory record {i} runs past the directory")
            name = cd[p + 46:p + 46 + name_len]
            entry = Entry(i, name if type(name) is bytes else bytes(name), flags, method, crc,
                          comp, usize, lho, eattr)
            d_comp, d_size, d_lho = comp, usize, lho
            if extra_len and max(comp, usize, lho) == U32:
                plain = False
                d_size, d_comp, d_lho = self._zip64_fields_dir(base + p + 46 + name_len,
                                                               extra_len, usize, comp, lho)
                self._zip64_fields_stat(entry, base + p + 46 + name_len, extra_len)
            elif plain and (version > 63 or (extra_len and not _plain_extra(
                    cd[p + 46 + name_len:p + 46 + name_len + extra_len]))):
                plain = False
            if plain and flags & 0x800:
                try:
                    entry.raw_name.decode("utf-8")
                except UnicodeDecodeError:
                    plain = False
            # miniz reads the method as a 32-bit field (method and time): a stored record
            # with a non-zero time is never checked for equal sizes
            if d_comp != U32 and d_size != U32 and (
                    (method == 0 and _time == 0 and d_size != d_comp) or (d_size and not d_comp)):
                raise ZipError(f"{entry.filename}: sizes that cannot be right")
            if disk == U16 or (disk != this_disk and disk != 1):
                raise ZipError("multi-disk archives are not supported by torch")
            if d_comp != U32 and d_lho + 30 + d_comp > size:
                raise ZipError(f"{entry.filename} runs past the end of the file")
            if flags & _LOCAL_DIR_IS_MASKED:
                raise ZipError("masked local headers (encrypted directory) are not supported")
            entries.append(entry)
            n -= total_len
            p += total_len
        # records that fill the directory exactly are what zipfile reads too
        self.plain = plain and n == 0

    def _zip64_fields_dir(self, at: int, length: int, usize: int, comp: int,
                          lho: int) -> tuple[int, int, int]:
        """The sizes ``read_central_dir`` checks: the zip64 field is read without minding
        its own length."""
        raw, rem, ptr = self.raw, length, at
        found = False
        while True:
            if rem < 4:
                raise ZipError("damaged extra field in the central directory")
            fid, fsize = _u16(raw, ptr), _u16(raw, ptr + 2)
            if fsize + 4 > rem:
                raise ZipError("damaged extra field in the central directory")
            if fid == 1:
                self.zip64 = found = True
                break
            ptr += 4 + fsize
            rem -= 4 + fsize
            if not rem:
                break
        if found and rem >= 4:
            rem -= 4
            ptr += 4
            if usize == U32 and rem >= 8:
                usize, rem, ptr = _u64(raw, ptr), rem - 8, ptr + 8
            if comp == U32 and rem >= 8:
                comp, rem, ptr = _u64(raw, ptr), rem - 8, ptr + 8
            if lho == U32 and rem >= 8:
                lho = _u64(raw, ptr)
        return usize, comp, lho

    def _zip64_fields_stat(self, entry: Entry, at: int, length: int) -> None:
        """``mz_zip_file_stat_internal``: the sizes extraction uses (a damaged field makes
        the record unreadable, not the archive)."""
        raw, rem, ptr = self.raw, length, at
        while rem:
            if rem < 4:
                entry.problem = "damaged zip64 extra field"
                return
            fid, fsize = _u16(raw, ptr), _u16(raw, ptr + 2)
            if fsize + 4 > rem:
                entry.problem = "damaged zip64 extra field"
                return
            if fid == 1:
                data, left = ptr + 4, fsize
                for attr in ("file_size", "compress_size", "header_offset"):
                    if getattr(entry, attr) == U32:
                        if left < 8:
                            entry.problem = "damaged zip64 extra field"
                            return
                        setattr(entry, attr, _u64(raw, data))
                        data, left = data + 8, left - 8
                return
            ptr += 4 + fsize
            rem -= 4 + fsize

    # -- lookups ----------------------------------------------------------------------------
    def _index_names(self) -> None:
        """A dict of ASCII-lowercased names: exact for miniz's binary search as long as no
        two names are equal once lowercased (then :meth:`locate` sorts like miniz)."""
        by_lower: dict[bytes, Entry] = {}
        dups: dict[bytes, list[Entry]] = {}
        for e in self.entries:
            low = e.raw_name.lower()
            first = by_lower.setdefault(low, e)
            if first is not e:
                dups.setdefault(low, [first]).append(e)
        self._by_lower = by_lower
        self.case_duplicates = dups

    def _heap_sorted(self) -> list[int]:
        """``mz_zip_reader_sort_central_dir_offsets_by_filename``, step for step: which of
        two equal names a binary search meets first depends on this exact permutation."""
        if self._sorted is not None:
            return self._sorted
        keys = [e.raw_name.lower() for e in self.entries]
        idx = list(range(len(keys)))
        size = len(idx)
        if size > 1:
            def sift(root: int, end: int) -> None:
                while True:
                    child = 2 * root + 1
                    if child >= end:
                        return
                    if child + 1 < end and keys[idx[child]] < keys[idx[child + 1]]:
                        child += 1
                    if not keys[idx[root]] < keys[idx[child]]:
                        return
                    idx[root], idx[child] = idx[child], idx[root]
                    root = child

            for start in range((size - 2) >> 1, -1, -1):
                sift(start, size)
            for end in range(size - 1, 0, -1):
                idx[end], idx[0] = idx[0], idx[end]
                sift(0, end)
        self._sorted = idx
        return idx

    def locate(self, name: str | bytes) -> Entry | None:
        """``mz_zip_reader_locate_file(name, NULL, 0)``: ASCII case-insensitive, the name
        a C string (cut at its first NUL)."""
        raw = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
        key = raw.split(b"\0", 1)[0].lower()
        assert self._by_lower is not None
        if key not in self.case_duplicates:
            return self._by_lower.get(key)
        order = self._heap_sorted()
        lo, hi = 0, len(order) - 1
        while lo <= hi:
            mid = lo + ((hi - lo) >> 1)
            entry = self.entries[order[mid]]
            other = entry.raw_name.lower()
            if other == key:
                return entry
            if other < key:
                lo = mid + 1
            else:
                hi = mid - 1
        return None  # pragma: no cover - the key is present

    def _root(self) -> tuple[bytes | None, str | None]:
        """``PyTorchStreamReader::init``: every lookup is prefixed by the folder of the
        FIRST record (up to its first ``/``)."""
        if not self.entries:
            return None, "the archive holds no records"
        first = self.entries[0].raw_name
        if b"/" not in first:
            return None, (f"its first record {_decode_name(first, 0x800)!r} is not in a "
                          "folder, so torch refuses the archive")
        return first.split(b"/", 1)[0], None

    def record(self, name: str) -> Entry | None:
        """The record torch's ``getRecord(name)`` reads: ``<root>/<name>``, located by miniz."""
        if self.root is None:
            return None
        return self.locate(self.root + b"/" + name.encode("utf-8", "surrogateescape"))

    @property
    def prefix(self) -> str:
        return "" if self.root is None else self.root.decode("utf-8", "replace") + "/"

    def all_records(self) -> list[str] | None:
        """``get_all_records()``: names under the root, cut like C strings; None where
        torch raises (a record outside the root folder)."""
        if self.root is None:
            return None
        prefix = self.root.split(b"\0", 1)[0] + b"/"
        out = []
        for e in self.entries:
            listed = e.listed_name
            if not listed.startswith(prefix):
                return None
            out.append(listed[len(prefix):].decode("utf-8", "replace"))
        return out

    def under_root(self, entry: Entry) -> str | None:
        """The record name torch would use for ``entry`` (without the root), or None."""
        prefix = self.prefix.encode("utf-8", "surrogateescape")
        if self.root is None or not entry.raw_name.startswith(prefix):
            return None
        return entry.raw_name[len(prefix):].decode("utf-8", "replace")


def open_directory(raw: Any) -> Directory:
    """The :class:`Directory` of the zip in ``raw``, as miniz reads it."""
    try:
        return Directory(raw)
    except struct.error:
        raise ZipError("the central directory is cut off") from None


def directory_of(src: Any) -> Directory:
    """The directory of a :class:`~ckpt_inspector.core.io.source.Source`, parsed once:
    detection and the reader share it."""
    return src.cached("zip.directory", lambda: open_directory(src.data))


# -- member bytes -------------------------------------------------------------------------------
def data_span(raw: Any, entry: Any, clamp: bool = False) -> tuple[int, int, str]:
    """(start, end, local-header name) of a member's stored bytes, where miniz reads them.
    miniz refuses a member whose compressed size runs past the end of the file; with
    ``clamp`` (how zipfile and unzip extract it: the deflate stream ends by itself) the
    span stops at the end instead."""
    h = entry.header_offset
    if h < 0 or h + 30 > len(raw) or bytes(raw[h:h + 4]) != LOCAL_SIG:
        raise MemberError(f"{entry.filename}: no local header where the directory points")
    flags = _u16(raw, h + 6)
    name_len, extra_len = struct.unpack_from("<HH", raw, h + 26)
    name = _decode_name(bytes(raw[h + 30:h + 30 + name_len]), flags)
    start = h + 30 + name_len + extra_len
    if start + entry.compress_size > len(raw):
        if clamp and start <= len(raw):
            return start, len(raw), name
        raise MemberError(f"{entry.filename}: declares {entry.compress_size:,} bytes, "
                          "more than the file holds")
    return start, start + entry.compress_size, name


def torch_refuses(entry: Any) -> str | None:
    """Why miniz's extraction of this record fails (so torch gets no bytes), or None."""
    problem = getattr(entry, "problem", None)
    if problem:
        return problem
    if entry.flag_bits & _REFUSED_FLAGS:
        return "it is flagged as encrypted or patched, which torch's reader refuses"
    if entry.compress_type not in (STORED, DEFLATED):
        return f"compression method {entry.compress_type} is not one torch reads"
    return None


def uninitialized(entry: Any) -> bool:
    """miniz returns without writing for directories and empty compressed data: torch then
    reads whatever the allocator left in a buffer of ``file_size`` bytes."""
    is_dir = entry.is_dir if isinstance(entry, Entry) else entry.filename.endswith("/")
    return entry.file_size > 0 and (is_dir or entry.compress_size == 0)


def read_member(raw: Any, entry: Any, limit: int) -> tuple[bytes, bool]:
    """The member's bytes as torch gets them, and whether its CRC matches (torch does not
    check it). Raises :class:`MemberError` past ``limit`` or where the bytes cannot be read."""
    data, crc_ok, _local = read_checked(raw, entry, limit)
    return data, crc_ok


def read_checked(raw: Any, entry: Any, limit: int) -> tuple[bytes, bool, str]:
    """:func:`read_member`, plus the name the local header gives."""
    if entry.file_size > limit:
        raise MemberError(f"{entry.filename} holds {entry.file_size:,} bytes, more than the "
                          f"{limit >> 20} MiB the reader accepts")
    start, end, local = data_span(raw, entry)
    if entry.compress_type == STORED:
        if start + entry.file_size > len(raw):
            raise MemberError(f"{entry.filename} runs past the end of the file")
        data = bytes(raw[start:start + entry.file_size])
    elif entry.compress_type == DEFLATED:
        data, complete = inflate(raw, start, end, entry.file_size, entry.filename)
        if not complete:
            raise MemberError(f"{entry.filename}: damaged compressed data")
    else:
        raise MemberError(f"{entry.filename}: compression method {entry.compress_type} is not "
                          "one torch writes")
    return data, zlib.crc32(data) == entry.CRC, local


def inflate(raw: Any, start: int, end: int, size: int, name: str = "",
            exact: bool = True) -> tuple[bytes, bool]:
    """Inflate ``raw[start:end]`` into at most ``size`` bytes, reading the input in 1 MiB
    pieces. Returns (bytes, complete): complete when the stream ends with exactly ``size``
    bytes, which is what miniz requires (more or fewer is an error there). With
    ``exact=False`` whatever inflates before an error or the ``size`` cap is returned."""
    inflater = zlib.decompressobj(-15)
    out = bytearray()
    pos = start
    try:
        while pos < end and not inflater.eof and len(out) < size:
            chunk = bytes(raw[pos:min(end, pos + _INFLATE_CHUNK)])
            pos += len(chunk)
            out += inflater.decompress(chunk, size - len(out))
            while inflater.unconsumed_tail and len(out) < size and not inflater.eof:
                out += inflater.decompress(inflater.unconsumed_tail, size - len(out))
            if inflater.unconsumed_tail:
                break
        if len(out) >= size and not inflater.eof:
            # full: the stream must end without another byte (miniz: "has more output")
            rest = inflater.unconsumed_tail or bytes(raw[pos:min(end, pos + _INFLATE_CHUNK)])
            if inflater.decompress(rest, 1):
                return bytes(out), False
    except zlib.error:
        if exact:
            raise MemberError(f"{name}: damaged compressed data") from None
        return bytes(out), False
    return bytes(out), inflater.eof and len(out) == size


def read_prefix(raw: Any, entry: Any, n: int, clamp: bool = False) -> bytes:
    """Up to ``n`` first bytes of a member, leniently (never inflating more than ``n``)."""
    try:
        start, end, _local = data_span(raw, entry, clamp)
    except MemberError:
        return b""
    if entry.compress_type == DEFLATED:
        return inflate(raw, start, end, min(n, max(entry.file_size, 0)) or n, exact=False)[0]
    return bytes(raw[start:start + min(n, entry.file_size)])


def local_name(raw: Any, entry: Any) -> str | None:
    try:
        return data_span(raw, entry)[2]
    except MemberError:
        return None


def name_mismatch(info: Any, local: str, where: str) -> Finding:
    return Finding(
        DANGEROUS, "name-mismatch",
        f"{info.filename} is called {local!r} in its local header: Python's zipfile refuses "
        "such members while torch reads them, so scanners built on zipfile miss their content",
        where)


def unsafe_path(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


# -- Python's zipfile, for the comparison --------------------------------------------------------
def zipfile_view(raw: Any) -> tuple[list[zipfile.ZipInfo] | None, str | None]:
    """What Python's ``zipfile`` lists, or (None, why it refuses the archive)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with zipfile.ZipFile(io.BytesIO(raw) if isinstance(raw, bytes)
                                 else _MapReader(raw)) as zf:
                return zf.infolist(), None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            RuntimeError, struct.error, UnicodeDecodeError, NotImplementedError,
            MemoryError) as err:
        return None, str(err) or type(err).__name__


def zipfile_read(raw: Any, name: str, limit: int) -> bytes:
    """``ZipFile.read(name)`` as a loader built on zipfile gets it (the last record of that
    name; a stored record's bytes are its compressed size, whatever size it declares), up
    to ``limit`` bytes. Raises :class:`MemberError` past the limit or where zipfile fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with zipfile.ZipFile(io.BytesIO(raw) if isinstance(raw, bytes)
                                 else _MapReader(raw)) as zf, zf.open(name) as member:
                data = member.read(limit + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            RuntimeError, struct.error, UnicodeDecodeError, NotImplementedError, KeyError,
            zlib.error, MemoryError) as err:
        raise MemberError(f"{name}: {err or type(err).__name__}") from None
    if len(data) > limit:
        raise MemberError(f"{name} holds more than the {limit >> 20} MiB the reader accepts")
    return data


def _info_key(info: zipfile.ZipInfo) -> tuple[str, int, int, int, int]:
    return (info.orig_filename, info.header_offset, info.compress_size, info.file_size,
            info.compress_type)


def as_entry(info: zipfile.ZipInfo, index: int = -1) -> Entry:
    """A zipfile record as an :class:`Entry` (to read it with the same code)."""
    flags = info.flag_bits
    raw_name = info.orig_filename.encode("utf-8" if flags & 0x800 else "cp437", "replace")
    e = Entry(index, raw_name, flags, info.compress_type, info.CRC, info.compress_size,
              info.file_size, info.header_offset, info.external_attr)
    e.filename = info.orig_filename
    return e


class _MapReader(io.RawIOBase):
    """A read-only file object over a memory map (zipfile wants seek/tell/read)."""

    def __init__(self, raw: Any):
        self.raw, self.pos = raw, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, offset if whence == 0 else
                       self.pos + offset if whence == 1 else len(self.raw) + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = len(self.raw) if n is None or n < 0 else min(len(self.raw), self.pos + n)
        data = bytes(self.raw[self.pos:end])
        self.pos = max(self.pos, end)
        return data


def zipfile_layout(raw: Any) -> tuple[int, int, int, int, int | None] | None:
    """(end record, directory start, directory size, shift, zip64 end record) where Python's
    ``zipfile`` (3.11: ``_EndRecData``, ``_RealGetContents``) finds them, or None where it
    gives up. It only looks at the very end or at the LAST signature in the last 64 KiB,
    takes a zip64 end record only right before its locator, and computes the directory's
    place from the end record's position, shifting every offset by the difference."""
    size = len(raw)
    if size < 22:
        return None
    tail = bytes(raw[size - 22:size])
    if tail[:4] == END_SIG and tail[-2:] == b"\0\0":
        eocd = size - 22
    else:
        start = max(size - (1 << 16) - 22, 0)
        i = bytes(raw[start:size]).rfind(END_SIG)
        if i < 0 or size - (start + i) < 22:
            return None
        eocd = start + i
    cd_size, cd_offset = _u32(raw, eocd + 12), _u32(raw, eocd + 16)
    z64 = None
    if eocd >= 20 and bytes(raw[eocd - 20:eocd - 16]) == ZIP64_LOCATOR_SIG:
        if _u32(raw, eocd - 16) != 0 or _u32(raw, eocd - 4) > 1:
            return None
        if eocd < 76:
            return None
        if bytes(raw[eocd - 76:eocd - 72]) == ZIP64_END_SIG:
            z64 = eocd - 76
            cd_size, cd_offset = _u64(raw, z64 + 40), _u64(raw, z64 + 48)
    shift = eocd - cd_size - cd_offset - (76 if z64 is not None else 0)
    if cd_offset + shift < 0:
        return None
    return eocd, cd_offset + shift, cd_size, shift, z64


def zipfile_agrees(directory: Directory) -> bool:
    """True when Python's zipfile certainly lists what torch's reader lists: the same end
    record, directory bytes and zip64 record, no shift, and records zipfile parses the
    same way. (Otherwise the two listings are compared record by record.)"""
    if not directory.plain:
        return False
    layout = zipfile_layout(directory.raw)
    return layout is not None and layout == (
        directory.end_offset, directory.cdir_offset, directory.cdir_size, 0,
        directory.zip64_end_offset)


# -- findings ---------------------------------------------------------------------------------
def audit(ckpt: Checkpoint, raw: Any, directory: Directory, label: str) -> list[Entry]:
    """Findings for the whole archive: duplicates (as miniz compares names), ``..`` paths,
    encryption, sizes past the end, and every way Python's ``zipfile`` sees another
    archive. Returns the records only ``zipfile`` sees (to be scanned as well). Local
    headers are checked where a member is read: reading all of them would touch every
    part of a multi-GB file just to list it."""
    entries = directory.entries
    for low, dups in directory.case_duplicates.items():
        names = sorted({d.filename for d in dups})
        winner = directory.locate(low)
        shown = " and ".join(repr(n) for n in names[:3])
        ckpt.findings.append(Finding(
            DANGEROUS, "duplicate-member",
            f"the archive holds {len(dups)} records named {shown} (torch compares names "
            f"without case): torch reads record #{winner.index if winner else '?'}, zipfile "
            "the last one; a way to show a scanner one file and torch another",
            label + dups[0].filename))
    for e in entries:
        where = label + e.filename
        if unsafe_path(e.filename):
            ckpt.findings.append(Finding(
                DANGEROUS, "unsafe-path",
                f"member path {e.filename!r} points outside the archive's folder", where))
        if e.flag_bits & 0x1:
            ckpt.findings.append(Finding(
                DANGEROUS, "encrypted-member",
                f"{e.filename} is marked encrypted, which torch never writes: a way to make "
                "scanners skip a member", where))
        if e.header_offset + 30 + e.compress_size > len(raw):
            ckpt.findings.append(Finding(
                DANGEROUS, "bad-member",
                f"{e.filename} declares {e.compress_size:,} bytes, more than the file "
                "holds", where))
    if zipfile_agrees(directory):
        return []
    theirs, refused = zipfile_view(raw)
    if theirs is None:
        ckpt.findings.append(Finding(
            DANGEROUS, "zip-mismatch",
            f"Python's zipfile refuses this archive ({refused}) while torch opens it: "
            "scanners built on zipfile see nothing of it", label.rstrip("/") or None))
        return []
    mine = {e.key() for e in entries}
    only_theirs = [as_entry(i, n) for n, i in enumerate(theirs) if _info_key(i) not in mine]
    theirs_keys = {_info_key(i) for i in theirs}
    del theirs
    only_mine = [e for e in entries if e.key() not in theirs_keys]
    if only_theirs or only_mine:
        def show(items: list[Entry]) -> str:
            names = ", ".join(repr(e.filename) for e in items[:3])
            return names + (f" and {len(items) - 3} more" if len(items) > 3 else "")
        parts = []
        if only_mine:
            parts.append(f"torch reads {show(only_mine)}, which zipfile does not list there")
        if only_theirs:
            parts.append(f"zipfile lists {show(only_theirs)}, which torch does not read")
        ckpt.findings.append(Finding(
            DANGEROUS, "zip-mismatch",
            "torch's zip reader and Python's zipfile see different archives"
            f"{_directory_trick(directory, len(raw))}: " + "; ".join(parts)
            + " (a scanner built on zipfile is shown other files than torch loads)",
            label.rstrip("/") or None))
    return only_theirs


def _directory_trick(directory: Directory, size: int) -> str:
    """A short reason for a listing difference, where one is obvious."""
    eocd = directory.end_offset
    expected = eocd - directory.cdir_size - (56 + 20 if directory.zip64_end_offset else 0)
    if directory.zip64_end_offset is not None and directory.zip64_end_offset != eocd - 20 - 56:
        return " (the zip64 locator points to a second end record)"
    if directory.cdir_offset != expected:
        return (f" (the end record places the directory at byte {directory.cdir_offset:,}; "
                f"zipfile reads the one at byte {max(expected, 0):,})")
    if eocd + 22 + _u16(directory.raw, eocd + 20) != size:
        return " (bytes or a second end record follow the one torch reads)"
    return ""


def unscanned(name: str, size: int, cap: int, where: str, why: str = "") -> Finding:
    return Finding(NEEDS_TRUST, "unscanned-member",
                   f"{name} ({size:,} bytes) is larger than the {cap >> 20} MiB this reader "
                   f"inflates{why}: it was not fully scanned", where)
