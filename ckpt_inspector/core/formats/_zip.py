"""Zip members read the way torch reads them, with every trick turned into a finding.

Python's ``zipfile`` stops at things torch's own reader (miniz) lets through: a
local-header name that differs from the central directory, a wrong CRC, an
"encrypted" flag on a stored member. A scanner that gives up there reports
nothing while ``torch.load`` runs the pickle. So members are read here straight
from their local headers (the central directory still comes from ``zipfile``),
and each oddity becomes a finding instead of an excuse.
"""

from __future__ import annotations

import encodings.cp437  # noqa: F401 - zipfile decodes legacy names with it; import it up front
import struct
import zipfile
import zlib
from typing import Any

from ckpt_inspector.core.scan import DANGEROUS, Finding
from ckpt_inspector.core.tree import Checkpoint


class MemberError(Exception):
    """A member's bytes cannot be read (the message says why)."""


def _decode_name(raw: bytes, flags: int) -> str:
    return raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")


def data_span(raw: Any, info: zipfile.ZipInfo) -> tuple[int, int, str]:
    """(start, end, local-header name) of a member's stored bytes."""
    h = info.header_offset
    if h < 0 or h + 30 > len(raw) or raw[h:h + 4] != b"PK\x03\x04":
        raise MemberError(f"{info.filename}: no local header where the directory points")
    flags = struct.unpack_from("<H", raw, h + 6)[0]
    name_len, extra_len = struct.unpack_from("<HH", raw, h + 26)
    name = _decode_name(bytes(raw[h + 30:h + 30 + name_len]), flags)
    start = h + 30 + name_len + extra_len
    end = start + info.compress_size
    if end > len(raw):
        raise MemberError(f"{info.filename}: declares {info.compress_size:,} bytes, "
                          "more than the file holds")
    return start, end, name


def read_member(raw: Any, info: zipfile.ZipInfo, limit: int) -> tuple[bytes, bool]:
    """The member's bytes, decompressed up to ``limit``, and whether its CRC matches."""
    data, crc_ok, _local = read_checked(raw, info, limit)
    return data, crc_ok


def read_checked(raw: Any, info: zipfile.ZipInfo, limit: int) -> tuple[bytes, bool, str]:
    """:func:`read_member`, plus the name the local header gives."""
    if info.file_size > limit:
        raise MemberError(f"{info.filename} holds {info.file_size:,} bytes, more than the "
                          f"{limit >> 20} MiB the reader accepts")
    start, end, local = data_span(raw, info)
    if info.compress_type == zipfile.ZIP_STORED:
        data = bytes(raw[start:start + min(info.file_size, info.compress_size)])
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(bytes(raw[start:end]), limit + 1)
        except zlib.error as err:
            raise MemberError(f"{info.filename}: damaged compressed data ({err})") from None
        if len(data) > limit:
            raise MemberError(f"{info.filename} inflates past {limit >> 20} MiB: a "
                              "compression bomb")
    else:
        raise MemberError(f"{info.filename}: compression method {info.compress_type} is not "
                          "one torch writes")
    return data, zlib.crc32(data) == info.CRC, local


def name_mismatch(info: zipfile.ZipInfo, local: str, where: str) -> Finding:
    return Finding(
        DANGEROUS, "name-mismatch",
        f"{info.filename} is called {local!r} in its local header: Python's zipfile refuses "
        "such members while torch reads them, so scanners built on zipfile miss their content",
        where)


def unsafe_path(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def audit(ckpt: Checkpoint, raw: Any, infos: list[zipfile.ZipInfo], label: str) -> None:
    """Findings from the central directory for every member: duplicates, ``..`` paths,
    encryption, sizes past the end of the file. Local headers are checked where a member
    is read (:func:`read_checked`): reading all of them would touch every part of a
    multi-GB file just to list it."""
    seen: dict[str, int] = {}
    for info in infos:
        seen[info.filename] = seen.get(info.filename, 0) + 1
    for name, n in seen.items():
        if n > 1:
            ckpt.findings.append(Finding(
                DANGEROUS, "duplicate-member",
                f"the archive holds {n} records named {name!r}: zip readers disagree on which "
                "one counts, a way to show a scanner one pickle and torch another", label + name))
    for info in infos:
        where = label + info.filename
        if unsafe_path(info.filename):
            ckpt.findings.append(Finding(
                DANGEROUS, "unsafe-path",
                f"member path {info.filename!r} points outside the archive's folder", where))
        if info.flag_bits & 0x1:
            ckpt.findings.append(Finding(
                DANGEROUS, "encrypted-member",
                f"{info.filename} is marked encrypted, which torch never writes: a way to make "
                "scanners skip a member", where))
        if info.header_offset + 30 + info.compress_size > len(raw):
            ckpt.findings.append(Finding(
                DANGEROUS, "bad-member",
                f"{info.filename} declares {info.compress_size:,} bytes, more than the file "
                "holds", where))


def looks_like_pickle(raw: Any, info: zipfile.ZipInfo) -> bool:
    """A member whose first bytes are a pickle protocol header (stored members only)."""
    if info.compress_type != zipfile.ZIP_STORED or info.file_size < 3:
        return False
    try:
        start, _end, _name = data_span(raw, info)
    except MemberError:
        return False
    return raw[start] == 0x80 and 2 <= raw[start + 1] <= 5
