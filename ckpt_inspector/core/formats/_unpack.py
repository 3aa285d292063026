"""A file compressed whole (gzip, bzip2, xz, LZMA, zlib), unpacked the way its loaders do.

Who loads such a file: ``joblib.load``, which picks the decompressor from the first
bytes (zlib ``x``, gzip, ``BZ``, LZMA ``]\\0``, xz) whatever the name;
``pandas.read_pickle`` by extension; anyone's ``pickle.load(gzip.open(path))`` or
``torch.load(gzip.open(path))``. Each reads the unpacked stream from its start until
its pickle ends, through the standard library's file objects, so the stream is unpacked
here with the same objects (``GzipFile`` reads concatenated members, ``BZ2File`` and
``LZMAFile`` concatenated streams; zlib is one stream, as joblib's reader reads it, also
after the header of joblib < 0.9.3's "Z-file"),
block by block: where the data breaks, what came before is what a loader read before
it failed, and it is kept. At most ``cap`` bytes are unpacked.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import mmap
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.io.source import BufferReader

BLOCK = 1 << 20
# unpacked here (a name for messages); others are told apart only to be refused
UNPACKED = ("gzip", "bzip2", "xz", "lzma", "zlib", "joblib-zfile")
ZFILE_HEADER = 2 + 19  # joblib < 0.9.3: "ZF", the unpacked length in hex padded to 19
SUFFIXES = (".gz", ".gzip", ".tgz", ".bz2", ".tbz2", ".xz", ".txz", ".lzma", ".z", ".zz",
            ".zlib")


@dataclass
class Unpacked:
    data: Any  # bytes, or an anonymous memory map
    error: str | None  # where the compressed data broke (what came before is kept)
    over: bool  # more than the cap: cut there


def kind_of(head: bytes) -> str | None:
    """The compression a file's first bytes announce, as the loaders that unpack it tell
    (zlib and LZMA only when their header is well formed, since ``x`` and ``]`` start
    other files too)."""
    head = bytes(head[:32])
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if len(head) >= 2 and head[0] == 0x78 and head[0] & 0x0F == 8 and \
            (head[0] << 8 | head[1]) % 31 == 0 and not head[1] & 0x20:
        return "zlib"  # CM 8 (deflate), FCHECK right, no preset dictionary
    if head.startswith(b"\x5d\x00") and len(head) >= 13:
        return "lzma"  # lc/lp/pb 3/0/2, as lzma's "alone" format writes them
    if _zfile_length(head) is not None:
        return "joblib-zfile"
    return "lzma" if _alone_header(head) else None


def _alone_header(head: bytes) -> bool:
    """An LZMA "alone" header as liblzma's automatic decoder (``lzma.open``, pandas'
    ``read_pickle`` of an ``.xz``) accepts it, whatever its properties: lc + lp <= 4, a
    dictionary size of 2^n or 2^n + 2^(n-1) (or 0, or 2^32 - 1), a size unknown or under
    2^38. (``I0\0\0\0``
    is one, and the start of an INT that ``pickle.load`` reads as 0.)"""
    if len(head) < 13 or head[0] >= 225:
        return False
    lc, rest = head[0] % 9, head[0] // 9
    if lc + rest % 5 > 4:
        return False
    d = struct.unpack_from("<I", head, 1)[0]
    size = struct.unpack_from("<Q", head, 5)[0]
    if not (size == (1 << 64) - 1 or size < 1 << 38):
        return False
    if d == 0:  # accepted too; a run of zero bytes (size 0) is no LZMA file, though
        return size != 0
    return d == 0xFFFFFFFF or d & (d - 1) == 0 or (d % 3 == 0 and (d // 3) & (d // 3 - 1) == 0)


def _zfile_length(head: bytes) -> int | None:
    """The length an old joblib "Z-file" header declares (read with int(..., 16))."""
    if not head.startswith(b"ZF") or len(head) < ZFILE_HEADER:
        return None
    try:
        return int(bytes(head[2:ZFILE_HEADER]).decode("ascii"), 16)
    except ValueError:
        return None


def starts(head: bytes, kind: str) -> bool:
    """Whether ``head`` unpacks without an error (as far as it goes)."""
    if kind == "joblib-zfile":
        head = head[ZFILE_HEADER + (head[ZFILE_HEADER:ZFILE_HEADER + 1] == b" "):]
        kind = "zlib"
    try:  # (an empty first stream unpacks to nothing, and the next one is read on)
        if kind == "zlib":
            zlib.decompressobj().decompress(bytes(head), 64)
        else:
            lzma.LZMADecompressor().decompress(bytes(head), 64)
    except (zlib.error, lzma.LZMAError, EOFError, ValueError):
        return False
    return True


def _opened(raw: Any, kind: str) -> Any:
    plain = BufferReader(raw)
    if kind == "joblib-zfile":  # its zlib data, after the header (and one space, if any)
        plain.seek(ZFILE_HEADER + (raw[ZFILE_HEADER:ZFILE_HEADER + 1] == b" "))
        kind = "zlib"
    fileobj = io.BufferedReader(plain, BLOCK)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=fileobj, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(fileobj, "rb")
    if kind == "zlib":
        return _ZlibReader(fileobj)
    return lzma.LZMAFile(fileobj, "rb")  # xz or "alone", told apart by lzma itself


class _ZlibReader:
    """One zlib stream, read block by block (what follows its end is not read)."""

    def __init__(self, fileobj: Any):
        self.fileobj = fileobj
        self.inflater = zlib.decompressobj()

    def read(self, n: int) -> bytes:
        out = b""
        while not out and not self.inflater.eof:
            raw = self.inflater.unconsumed_tail or self.fileobj.read(BLOCK)
            if not raw:
                raise EOFError("the zlib stream ends before its end marker")
            out = self.inflater.decompress(raw, n)
        return out


def unpack(raw: Any, kind: str, cap: int) -> Unpacked:
    """At most ``cap`` bytes of the unpacked stream (``over`` if there were more), and the
    error where the compressed data broke, if it did. The bytes go into an anonymous
    memory map of ``cap`` bytes (its pages are taken only as they are written), cut to
    size after: readers take a map as they take a file's, and memory peaks at the
    unpacked size, not twice it (where a map cannot be cut, its bytes are copied)."""
    reader = _opened(raw, kind)
    # read1: one block at a time, so that what a block before the damage held is kept
    # (read(n) fills n bytes from several blocks and loses them all to the error)
    read = getattr(reader, "read1", reader.read)
    out = mmap.mmap(-1, max(cap, 1))
    size, error, over = 0, None, False
    while True:
        try:
            chunk = read(min(BLOCK, cap - size) or 1)
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as err:
            error = f"the {kind} data is damaged after {size:,} unpacked bytes ({err})"
            break
        if not chunk:
            break
        if size == cap:  # a byte more than the cap: there is more
            over = True
            break
        out[size:size + len(chunk)] = chunk
        size += len(chunk)
    if size == 0:
        out.close()
        return Unpacked(b"", error, over)
    try:
        out.resize(size)
    except (OSError, SystemError, ValueError):  # no mremap (macOS): a copy
        data = out[:size]
        out.close()
        return Unpacked(data, error, over)
    return Unpacked(out, error, over)


def unpacks(raw: Any, kind: str) -> bool:
    """Whether the data unpacks to at least one byte."""
    reader = _opened(raw, kind)
    read = getattr(reader, "read1", reader.read)
    try:
        return bool(read(1))
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
        return False


def inner_name(name: str) -> str:
    """The name of what a compressed file holds: its own, less the compression's suffix."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    lower = base.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix) and len(base) > len(suffix):
            stem = base[:-len(suffix)]
            return stem + ".tar" if suffix in (".tgz", ".tbz2", ".txz") else stem
    return base
