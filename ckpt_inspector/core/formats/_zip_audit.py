"""Python's ``zipfile`` view of an archive, compared with torch's: every record one of
them reads and the other does not, and the archive-wide findings (duplicates, unsafe
paths, encryption, sizes past the end)."""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
import zlib
from typing import Any

from ckpt_inspector.core.findings import DANGEROUS, NEEDS_TRUST, Finding
from ckpt_inspector.core.formats._zip import (
    END_SIG,
    ZIP64_END_SIG,
    ZIP64_LOCATOR_SIG,
    Directory,
    Entry,
    _u16,
    _u32,
    _u64,
)
from ckpt_inspector.core.formats._zip_members import MemberError, unsafe_path
from ckpt_inspector.core.io.source import BufferReader
from ckpt_inspector.core.tree import Checkpoint

# records past which zipfile's listing is not built beside torch's (about 2.5 KB a record
# for the two; 1,000,000 records of odd forms took 2.5 GB and 30 s)
MAX_COMPARED = 250_000


def zipfile_view(raw: Any) -> tuple[list[zipfile.ZipInfo] | None, str | None]:
    """What Python's ``zipfile`` lists, or (None, why it refuses the archive)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with zipfile.ZipFile(io.BytesIO(raw) if isinstance(raw, bytes)
                                 else BufferReader(raw)) as zf:
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
                                 else BufferReader(raw)) as zf, zf.open(name) as member:
                data = member.read(limit + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            RuntimeError, struct.error, UnicodeDecodeError, NotImplementedError, KeyError,
            zlib.error, MemoryError) as err:
        raise MemberError(f"{name}: {err or type(err).__name__}") from None
    if len(data) > limit:
        raise MemberError(f"{name} holds more than the {limit >> 20} MiB the reader accepts")
    return data


class ZipfileReader:
    """Members read as Python's zipfile reads them, through one ``ZipFile`` opened on first
    use (opening one per member would parse the whole directory each time): for members
    torch's reader does not unpack (bzip2, LZMA) that zipfile-based loaders do. Every
    failure is a :class:`MemberError`."""

    ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
              RuntimeError, struct.error, UnicodeDecodeError, NotImplementedError, KeyError,
              zlib.error, MemoryError, LookupError)

    def __init__(self, raw: Any):
        self._raw = raw
        self._zf: zipfile.ZipFile | None = None
        self._refused: MemberError | None = None  # zipfile cannot open the archive

    def read(self, name: str | zipfile.ZipInfo, limit: int, whole: bool = True) -> bytes:
        """Up to ``limit`` bytes of ``name`` (or of that record); with ``whole``, more than
        that is an error."""
        if self._refused is not None:
            raise self._refused
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self._zf is None:
                    try:
                        self._zf = zipfile.ZipFile(io.BytesIO(self._raw) if isinstance(
                            self._raw, bytes) else BufferReader(self._raw))
                    except self.ERRORS as err:  # once: not again for every member
                        self._refused = MemberError(f"zipfile refuses the archive: {err}")
                        raise self._refused from None
                with self._zf.open(name) as member:
                    data = member.read(limit + 1 if whole else limit)
        except self.ERRORS as err:
            raise MemberError(f"{name}: {err or type(err).__name__}") from None
        if whole and len(data) > limit:
            raise MemberError(f"{name} holds more than the {limit >> 20} MiB the reader "
                              "accepts")
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


# -- findings ----------------------------------------------------------------------------
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
    if len(entries) > MAX_COMPARED:  # zipfile's listing would be kept beside this one
        layout = zipfile_layout(directory.raw)
        ours = (directory.end_offset, directory.cdir_offset, directory.cdir_size, 0,
                directory.zip64_end_offset)
        if layout is None or layout != ours:  # another directory, or none: no listing needed
            ckpt.findings.append(Finding(
                DANGEROUS, "zip-mismatch",
                "torch's zip reader and Python's zipfile see different archives"
                f"{_directory_trick(directory, len(raw))}: zipfile reads "
                + ("no directory" if layout is None else "its directory elsewhere")
                + " (its records were not listed here: more than "
                f"{MAX_COMPARED:,})", label.rstrip("/") or None))
            return []
        ckpt.findings.append(Finding(
            NEEDS_TRUST, "zip-unverified",
            f"the archive's {len(entries):,} records include some Python's zipfile may read "
            "otherwise than torch (zip64 fields, newer versions, odd names); its listing is "
            f"compared with torch's up to {MAX_COMPARED:,} records, so what a loader built "
            "on zipfile sees here is not known", label.rstrip("/") or None))
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
