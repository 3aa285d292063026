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
import struct
from typing import Any

from ckpt_inspector.core.formats._zip_lookup import MinizLookup

LOCAL_SIG, CENTRAL_SIG, END_SIG = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
ZIP64_END_SIG, ZIP64_LOCATOR_SIG = b"PK\x06\x06", b"PK\x06\x07"
U32, U16 = 0xFFFFFFFF, 0xFFFF
STORED, DEFLATED = 0, 8
# miniz's getAllRecords copies names into a buffer of this size (MZ_ZIP_MAX_ARCHIVE_FILENAME_SIZE)
MAX_LISTED_NAME = 511
# general-purpose flags miniz refuses to extract: encrypted, compressed patch, strong encryption
_REFUSED_FLAGS = 0x1 | 0x20 | 0x40
_LOCAL_DIR_IS_MASKED = 0x2000
# Entry objects cost ~300 bytes each (and zipfile's listing as much again): a checkpoint
# has a record per storage, and torch.save writes 300,000s of them for a state_dict that
# large (torch loads it; 300,000 tensors read here in 8 s and 1.1 GB). The pickle's
# opcode budget stops near 800,000 tensors; an archive claiming more records is refused.
MAX_RECORDS = 1_000_000


class ZipError(Exception):
    """torch's reader cannot open the archive (the message says why)."""


class ZipLimit(ZipError):
    """The archive is past one of this reader's bounds (torch's reader may well open it)."""


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


def _plain_zip64(entry: Entry, extra: bytes, usize: int, comp: int, lho: int) -> bool:
    """Whether zipfile reads a zip64 record's values as miniz does: the extra holds one
    zip64 field and nothing else, eight bytes for each size or offset the record marks as
    in it (in zipfile's order, which is miniz's), and no more. torch.save writes such
    records in a file past 4 GiB: telling them plain spares listing its records again
    with zipfile."""
    if entry.problem or len(extra) < 4:
        return False
    tp, ln = struct.unpack_from("<HH", extra)
    marked = [v for v in (usize, comp, lho) if v == U32]
    if tp != 1 or ln + 4 != len(extra) or ln != 8 * len(marked):
        return False
    values = iter(struct.unpack_from(f"<{len(marked)}Q", extra, 4))
    return all(
        getattr(entry, attr) == (next(values) if v == U32 else v)
        for attr, v in (("file_size", usize), ("compress_size", comp), ("header_offset", lho)))


def _reads_plainly(entry: Entry, version: int, extra: bytes) -> bool:
    """Whether zipfile reads a record without zip64 values the way miniz does."""
    if version > 63 or (extra and not _plain_extra(extra)):
        return False
    if entry.flag_bits & 0x800:
        try:
            entry.raw_name.decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


# sliced, not unpacked in place: ``raw`` may be a remote file's buffer, which slices
def _u16(raw: Any, at: int) -> int:
    return struct.unpack_from("<H", raw[at:at + 2])[0]


def _u32(raw: Any, at: int) -> int:
    return struct.unpack_from("<I", raw[at:at + 4])[0]


def _u64(raw: Any, at: int) -> int:
    return struct.unpack_from("<Q", raw[at:at + 8])[0]


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


class Directory(MinizLookup):
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
        total, this_disk = self._end_record()
        cdir_ofs, cdir_size, raw = self.cdir_offset, self.cdir_size, self.raw
        # the directory is parsed from one copy when it is of a sane size
        if cdir_size <= 64 << 20:
            cd, base = bytes(raw[cdir_ofs:cdir_ofs + cdir_size]), cdir_ofs
        else:
            cd, base = raw, 0
        p, n = cdir_ofs - base, cdir_size
        entries = self.entries
        # whether Python's zipfile parses these same records the same way (see audit)
        plain = True
        for i in range(total):
            entry, total_len, plain = self._entry(cd, base, p, n, i, this_disk, plain)
            entries.append(entry)
            n -= total_len
            p += total_len
        # records that fill the directory exactly are what zipfile reads too
        self.plain = plain and n == 0

    def _end_record(self) -> tuple[int, int]:
        """The end record (and the zip64 one it points to): (record count, this disk);
        sets the directory's offset, size and count."""
        raw, size, eocd = self.raw, self.size, self.end_offset
        total = _u16(raw, eocd + 10)
        on_disk = _u16(raw, eocd + 8)
        this_disk = _u16(raw, eocd + 4)
        cdir_disk = _u16(raw, eocd + 6)
        cdir_size = _u32(raw, eocd + 12)
        cdir_ofs = _u32(raw, eocd + 16)
        z64 = self._zip64_end()
        self.zip64_end_offset = z64
        if z64 is not None:
            total, on_disk, cdir_size, this_disk, cdir_disk, cdir_ofs = self._zip64_end_fields(z64)
        if total != on_disk:
            raise ZipError("multi-disk archives are not supported by torch")
        if (this_disk | cdir_disk) != 0 and (this_disk != 1 or cdir_disk != 1):
            raise ZipError("multi-disk archives are not supported by torch")
        if cdir_size < total * 46:
            raise ZipError("the central directory is smaller than its record count")
        if cdir_ofs + cdir_size > size:
            raise ZipError("the central directory runs past the end of the file")
        if total > MAX_RECORDS:
            raise ZipLimit(f"the archive claims {total:,} records, more than the "
                           f"{MAX_RECORDS:,} this reader lists")
        self.cdir_offset, self.cdir_size, self.count = cdir_ofs, cdir_size, total
        return total, this_disk

    def _zip64_end(self) -> int | None:
        """The offset of the zip64 end record the locator points to, if there is one."""
        raw, eocd = self.raw, self.end_offset
        if eocd >= 20 + 56 and bytes(raw[eocd - 20:eocd - 16]) == ZIP64_LOCATOR_SIG:
            z64_ofs = _u64(raw, eocd - 20 + 8)
            if z64_ofs > self.size - 56:
                raise ZipError("the zip64 locator points past the end of the file")
            if bytes(raw[z64_ofs:z64_ofs + 4]) == ZIP64_END_SIG:
                self.zip64 = True
                return z64_ofs
        return None

    def _zip64_end_fields(self, z64: int) -> tuple[int, int, int, int, int, int]:
        """(total, on disk, directory size, this disk, directory disk, directory offset)
        from the zip64 end record."""
        raw, eocd = self.raw, self.end_offset
        disks = _u32(raw, eocd - 20 + 16)
        if _u64(raw, z64 + 4) < 56 - 12:
            raise ZipError("damaged zip64 end record")
        if disks != 1:
            raise ZipError("multi-disk archives are not supported by torch")
        total64, on_disk64 = _u64(raw, z64 + 32), _u64(raw, z64 + 24)
        if total64 > U32 or on_disk64 > U32:
            raise ZipError("too many records for torch's zip reader")
        size64 = _u64(raw, z64 + 40)
        if size64 > U32:
            raise ZipError("central directory too large for torch's zip reader")
        return (total64, on_disk64, size64, _u32(raw, z64 + 16), _u32(raw, z64 + 20),
                _u64(raw, z64 + 48))

    def _entry(self, cd: Any, base: int, p: int, n: int, i: int, this_disk: int,
               plain: bool) -> tuple[Entry, int, bool]:
        """Record ``i`` at ``cd[p:]`` (``n`` bytes of the directory left): the entry, its
        length in the directory, and whether zipfile still reads the records plainly."""
        if n < 46:
            raise ZipError(f"central directory record {i} is damaged")
        (sig, version, flags, method, _time, crc, comp, usize, name_len, extra_len,
         comment_len, disk, eattr, lho) = _CENTRAL.unpack_from(cd, p)
        if sig != CENTRAL_SIG:
            raise ZipError(f"central directory record {i} is damaged")
        total_len = 46 + name_len + extra_len + comment_len
        if total_len > n:
            raise ZipError(f"central directory record {i} runs past the directory")
        name = cd[p + 46:p + 46 + name_len]
        entry = Entry(i, name if type(name) is bytes else bytes(name), flags, method, crc,
                      comp, usize, lho, eattr)
        d_comp, d_size, d_lho = comp, usize, lho
        extra_at = p + 46 + name_len
        if extra_len and max(comp, usize, lho) == U32:
            d_size, d_comp, d_lho = self._zip64_fields_dir(base + extra_at, extra_len, usize,
                                                           comp, lho)
            self._zip64_fields_stat(entry, base + extra_at, extra_len)
            if plain:
                extra = cd[extra_at:extra_at + extra_len]
                plain = _reads_plainly(entry, version, b"") and _plain_zip64(
                    entry, extra if type(extra) is bytes else bytes(extra), usize, comp, lho)
        elif plain:
            plain = _reads_plainly(entry, version, cd[extra_at:extra_at + extra_len])
        # miniz reads the method as a 32-bit field (method and time): a stored record
        # with a non-zero time is never checked for equal sizes
        if d_comp != U32 and d_size != U32 and (
                (method == 0 and _time == 0 and d_size != d_comp) or (d_size and not d_comp)):
            raise ZipError(f"{entry.filename}: sizes that cannot be right")
        if disk == U16 or (disk != this_disk and disk != 1):
            raise ZipError("multi-disk archives are not supported by torch")
        if d_comp != U32 and d_lho + 30 + d_comp > self.size:
            raise ZipError(f"{entry.filename} runs past the end of the file")
        if flags & _LOCAL_DIR_IS_MASKED:
            raise ZipError("masked local headers (encrypted directory) are not supported")
        return entry, total_len, plain

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
