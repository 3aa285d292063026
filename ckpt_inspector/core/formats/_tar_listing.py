"""Listing a tar archive the way ``torch.load`` does: Python's tarfile, through a file
object that bounds each header record, within a member count and a time limit; which
members torch reads (the last of a name) and whether it is a torch checkpoint at all."""

from __future__ import annotations

import bisect
import os
import posixpath
import tarfile
import time
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import NEEDS_TRUST, Finding
from ckpt_inspector.core.formats._common import fail
from ckpt_inspector.core.io.source import Source
from ckpt_inspector.core.tree import Checkpoint, Node

MEMBERS = ("storages", "tensors", "pickle")
MAX_MEMBERS = 100_000
# what tarfile may read for one member's headers (pax records, GNU long names, sparse maps)
MAX_HEADER_BYTES = 1 << 20
# Python < 3.11.10 parses pax records with a regex that is quadratic in a run of digits
# (CVE-2024-6232); real records hold numbers of at most ~20 digits
MAX_DIGIT_RUN = 256
LIST_SECONDS = 20.0


def is_tar(head: bytes) -> bool:
    """Whether ``tarfile.open`` takes these first bytes for a tar archive with members: a
    first block that is a valid header (only its checksum and number fields are checked,
    no magic). torch tries tar before anything else in files that are not zip archives,
    so this decides which path ``torch.load`` takes.

    512 zero bytes open as an empty archive, where torch finds no ``storages`` and fails
    without running anything: that is reported as for bytes no format recognises."""
    block = bytes(head[:tarfile.BLOCKSIZE])
    if len(block) < tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except (tarfile.HeaderError, ValueError, TypeError, OverflowError):
        return False  # EOFHeaderError (all zeros) included
    return True


class NotTar(Exception):
    """tarfile raised a TarError: torch then reads the file as a pickle stream."""


class _Refused(Exception):
    """A cap was hit while tarfile read the headers."""


class _Reader:
    """The file object tarfile reads from: the mapped bytes, each header bounded.

    tarfile reads a header 512 bytes at a time and an extended record (pax, GNU long
    name) in one piece; between two members it needs a few records at most, so
    ``budget`` (reset before each member) caps what a crafted header can make it read.
    """

    def __init__(self, data: Any):
        self.data = data
        self.pos = 0
        self.budget: int | None = None

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = max(len(self.data) - self.pos, 0)
        if self.budget is not None:
            self.budget -= n
            if self.budget < 0:
                raise _Refused(f"a tar header needs more than {MAX_HEADER_BYTES >> 20} MiB: "
                               "refused")
        chunk = bytes(self.data[self.pos:self.pos + n])
        self.pos += len(chunk)
        if self.budget is not None and len(chunk) > tarfile.BLOCKSIZE and _digit_run(chunk):
            raise _Refused(f"a tar header record holds a number of more than {MAX_DIGIT_RUN} "
                           "digits: refused (Python's tarfile would take minutes on it)")
        return chunk

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: len(self.data)}[whence]
        if base + pos >= 1 << 63:  # as a real file's seek (a pax size of 2**66)
            raise OverflowError("seek offset does not fit in 64 bits")
        self.pos = max(base + pos, 0)
        return self.pos

    def tell(self) -> int:
        return self.pos


_DIGIT_MAP = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))


def _digit_run(chunk: bytes) -> bool:
    return b"0" * (MAX_DIGIT_RUN + 1) in chunk.translate(_DIGIT_MAP)


@dataclass
class Listing:
    """Every member in archive order, with the lookups tarfile does on them."""

    members: list[tarfile.TarInfo]
    by_name: dict[str, list[int]]  # exact names (getmember)
    by_norm: dict[str, list[int]]  # os.path.normpath'd names (link targets)
    tar: tarfile.TarFile
    reader: _Reader

    def last(self, name: str) -> int | None:
        """``getmember(name)``: the last member of that name."""
        found = self.by_name.get(name.rstrip("/"))
        return found[-1] if found else None

    def link_target(self, i: int) -> int | None:
        """tarfile's ``_find_link_target``: a symbolic link names a path relative to its
        own folder, searched in the whole archive; a hard link an earlier member."""
        m = self.members[i]
        if m.issym():
            name = "/".join(filter(None, (posixpath.dirname(m.name), m.linkname)))
            found = self.by_norm.get(os.path.normpath(name))
            return found[-1] if found else None
        found = self.by_norm.get(os.path.normpath(m.linkname))
        if not found:
            return None
        k = bisect.bisect_left(found, i)
        return found[k - 1] if k else None


def list_tar(data: Any) -> Listing:
    """The members, as ``tarfile.open(mode="r:")`` and ``getmembers()`` read them.

    Raises :class:`NotTar` where tarfile raises a TarError, CheckpointError where a
    cap is hit or tarfile fails otherwise (torch then fails too: nothing runs)."""
    reader = _Reader(data)
    deadline = time.monotonic() + LIST_SECONDS
    try:
        reader.budget = MAX_HEADER_BYTES
        # what _legacy_load calls; nothing to close, the bytes are the caller's
        tar = tarfile.open(fileobj=reader, mode="r:")  # noqa: SIM115
        while True:
            reader.budget = MAX_HEADER_BYTES
            if tar.next() is None:
                break
            if len(tar.members) > MAX_MEMBERS:
                raise _Refused(f"a tar archive of more than {MAX_MEMBERS:,} members: refused")
            if time.monotonic() > deadline:
                raise _Refused(f"listing the tar archive took more than {LIST_SECONDS:.0f} s: "
                               "refused")
    except tarfile.TarError as err:
        raise NotTar(f"{type(err).__name__}: {err}") from None
    except _Refused as err:
        raise CheckpointError(str(err)) from None
    except RecursionError:
        raise CheckpointError("tar headers nested too deeply") from None
    except Exception as err:  # tarfile's own failure on a crafted header: torch fails too
        raise CheckpointError(f"damaged tar archive ({type(err).__name__}: {err})") from None
    finally:
        reader.budget = None
    by_name: dict[str, list[int]] = {}
    by_norm: dict[str, list[int]] = {}
    for i, m in enumerate(tar.members):
        by_name.setdefault(m.name, []).append(i)
        by_norm.setdefault(os.path.normpath(m.name), []).append(i)
    return Listing(tar.members, by_name, by_norm, tar, reader)


class TarMembers(dict):
    """``{name: TarInfo}`` of the regular members (the last of each name), for the
    archive reader; ``names`` holds every member's name, ``tar_error`` why tarfile
    refused the file (torch then reads it as a pickle stream)."""

    names: frozenset[str] = frozenset()
    tar_error: str | None = None


def members_of(ckpt: Checkpoint, src: Source) -> TarMembers:
    try:
        listing = src.cached("tar.listing", lambda: list_tar(src.data))
    except NotTar as err:
        found = TarMembers()
        found.tar_error = str(err)
        return found
    except CheckpointError as err:
        raise fail(ckpt, str(err)) from None
    found = TarMembers()
    found.names = frozenset(listing.by_name)
    for m in listing.members:
        if m.isreg() and m.sparse is None:
            found[m.name] = m
        else:
            found.pop(m.name, None)  # tar -x replaces it with this one
            if m.sparse is not None:
                ckpt.findings.append(Finding(NEEDS_TRUST, "unscanned-member",
                                             f"{m.name} is a sparse file: not scanned inside "
                                             "an archive", m.name))
            elif m.issym() or m.islnk():
                ckpt.findings.append(Finding(NEEDS_TRUST, "unscanned-member",
                                             f"{m.name} is a link to {m.linkname!r}: extract "
                                             "the archive and open the file it names", m.name))
    return found


def runs_pickles(src: Source) -> bool | None:
    """Whether ``torch.load`` runs pickles from the tar ``src`` (:func:`is_torch_tar`);
    None when the tar cannot be listed."""
    try:
        members = members_of(Checkpoint(src.name, "archive", Node("dict")), src)
    except CheckpointError:
        return None
    return is_torch_tar(members)


def is_torch_tar(members: dict[str, Any]) -> bool:
    """Whether ``torch.load`` runs pickles from this tar: it extracts ``storages`` first
    (whatever kind of member it is), and reads a file tarfile refuses as a pickle stream."""
    if getattr(members, "tar_error", None):
        return True
    return "storages" in getattr(members, "names", members)
