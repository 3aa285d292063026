"""A zip member's bytes as torch's miniz gives them: where they start (from the local
header), whether torch refuses the record, inflating within a cap, and the
:class:`ZipEntryData` a tensor's storage reads from."""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import DANGEROUS, NEEDS_TRUST, Finding
from ckpt_inspector.core.formats._zip import (
    _REFUSED_FLAGS,
    DEFLATED,
    LOCAL_SIG,
    STORED,
    Entry,
    _decode_name,
    _u16,
)
from ckpt_inspector.core.tensors import DataSource, mapped_file

_INFLATE_CHUNK = 1 << 20


class MemberError(Exception):
    """A member's bytes cannot be read (the message says why)."""


def data_span(raw: Any, entry: Any, clamp: bool = False) -> tuple[int, int, str]:
    """(start, end, local-header name) of a member's stored bytes, where miniz reads them.
    miniz refuses a member whose compressed size runs past the end of the file; with
    ``clamp`` (how zipfile and unzip extract it: the deflate stream ends by itself) the
    span stops at the end instead."""
    h = entry.header_offset
    if h < 0 or h + 30 > len(raw) or bytes(raw[h:h + 4]) != LOCAL_SIG:
        raise MemberError(f"{entry.filename}: no local header where the directory points")
    flags = _u16(raw, h + 6)
    name_len, extra_len = struct.unpack_from("<HH", raw[h + 26:h + 30])
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


def unscanned(name: str, size: int, cap: int, where: str, why: str = "") -> Finding:
    return Finding(NEEDS_TRUST, "unscanned-member",
                   f"{name} ({size:,} bytes) is larger than the {cap >> 20} MiB this reader "
                   f"inflates{why}: it was not fully scanned", where)


class ZipEntryData(DataSource):
    """A zip member, read where torch's zip reader reads it. Stored (uncompressed)
    members, which torch writes, are memory-mapped in place; the local header is read on
    first use, so listing an archive touches none of its records. ``info`` is a record of
    ``formats._zip`` (or anything with ``zipfile.ZipInfo``'s attribute names)."""

    def __init__(self, container: str | bytes, info: Any, byteorder: str = "little"):
        self.container = container  # a path, or the bytes of a nested archive
        self.info = info
        self.nbytes = info.file_size
        self.byteorder = byteorder

    def file_span(self) -> tuple[str, int] | None:
        info = self.info
        if not isinstance(self.container, str) or info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(self.container, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(30)
        if header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"zip record {info.filename} has a damaged local header")
        name_len, extra_len = struct.unpack_from("<HH", header, 26)
        return self.container, info.header_offset + 30 + name_len + extra_len

    def _stored_start(self, raw: Any) -> int:
        """Where a stored member's bytes begin: after its local header, as miniz reads."""
        info = self.info
        h = info.header_offset
        header = bytes(raw[h:h + 30])
        if header[:4] != b"PK\x03\x04" or len(header) < 30:
            raise CheckpointError(f"zip record {info.filename} has a damaged local header")
        name_len, extra_len = struct.unpack_from("<HH", header, 26)
        start = h + 30 + name_len + extra_len
        if start + info.file_size > len(raw):
            raise CheckpointError(f"zip record {info.filename} runs past the end of the file")
        return start

    @property
    def remote(self) -> bool:
        return hasattr(self.container, "fetch") and self.info.compress_type == zipfile.ZIP_STORED

    def chunks(self, offset: int = 0, length: int | None = None,
               size: int = 16 << 20) -> Iterator[bytes]:
        fetch = getattr(self.container, "fetch", None)
        if fetch is None or self.info.compress_type != zipfile.ZIP_STORED:
            yield from super().chunks(offset, length, size)
            return
        # a remote file: each piece fetched on its own, never the whole member at once
        start = self._stored_start(self.container)
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        for pos in range(offset, end, size):
            yield fetch(start + pos, start + min(end, pos + size))

    def buffer(self) -> memoryview:
        info = self.info
        raw = mapped_file(self.container) if isinstance(self.container, str) else self.container
        if info.compress_type == zipfile.ZIP_STORED:
            start = self._stored_start(raw)
            fetch = getattr(raw, "fetch", None)
            if fetch is not None:  # a remote file: the data itself, past the structure cache
                return memoryview(fetch(start, start + info.file_size))
            return memoryview(raw)[start:start + info.file_size]
        # compressed (torch never writes these): inflated the way torch's reader does it,
        # from the record torch reads, not from whatever zipfile would pick
        try:
            data, _crc_ok = read_member(raw, info, 1 << 40)
        except MemberError as err:
            raise CheckpointError(str(err)) from None
        return memoryview(data)
