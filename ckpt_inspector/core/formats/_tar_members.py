"""Which bytes ``torch._legacy_load`` reads for a member of its tar: ``storages`` and
``tensors`` are extracted into a folder first (a link is made on disk, so a symbolic
link names a file torch extracted, or one outside the archive), ``pickle`` is read with
``extractfile`` (links followed inside the archive); a sparse member is read with its
holes filled, as tarfile writes or reads it."""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.findings import DANGEROUS
from ckpt_inspector.core.formats._tar_listing import Listing, NotTar
from ckpt_inspector.core.io.source import Source
from ckpt_inspector.core.tensors import BytesRange, DataSource

MAX_REBUILT = 256 << 20  # a sparse member, rebuilt in memory as tarfile would write it


@dataclass
class Content:
    """The bytes torch reads for one member: ``data[start:end]``."""

    data: Any
    start: int
    end: int
    what: str  # the member, and the links followed to it
    in_file: bool  # data is the archive itself, so ranges are file ranges

    def range(self, src: Source, pos: int, n: int) -> DataSource:
        if self.in_file:
            return src.range(pos, n)
        return BytesRange(self.data, pos, n)


class Stop(Exception):
    """torch fails at this point: nothing after it runs."""


def _kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symbolic link"
    if m.islnk():
        return "hard link"
    if m.isdir():
        return "folder"
    if m.isfifo():
        return "FIFO"
    if m.ischr() or m.isblk():
        return "device"
    return "file"


class MemberResolver:
    """Resolving members the way torch does (mixed into the legacy loader, which has
    ``src``, ``listing``, ``extracted`` and ``finding``)."""

    src: Source
    listing: Listing
    extracted: dict[str, Content]

    def finding(self, severity: str, code: str, message: str, member: str) -> None:
        raise NotImplementedError

    def extract(self, name: str) -> Content:
        """What ``tar.extract(name, tmpdir)`` leaves at ``tmpdir/name`` and torch opens."""
        i = self.listing.last(name)
        if i is None:
            raise Stop(f"tar archive without a {name} member (torch.load fails there)")
        chain: list[str] = []
        seen: set[int] = set()
        m = self.listing.members[i]
        while m.islnk() or m.issym():
            if i in seen:
                raise Stop(f"{name}: tar links form a loop")
            seen.add(i)
            chain.append(f"{m.name} → {m.linkname}")
            path = posixpath.normpath(m.linkname) if m.linkname else "."
            if m.linkname.startswith("/") or path == ".." or path.startswith("../"):
                self.finding(DANGEROUS, "tar-link",
                             f"{name} is a {_kind(m)} to {m.linkname!r}, outside the archive: "
                             "torch.load reads that file of the loading machine as "
                             f"{name} ({' ; '.join(chain)}); what it holds cannot be checked",
                             name)
                raise Stop(f"{name} is a link out of the archive")
            if path in self.extracted:  # the file torch extracted before this one
                content = self.extracted[path]
                break
            if m.issym():
                # made on disk and opened there: it names nothing torch has extracted
                raise Stop(f"{name} is a symbolic link to {m.linkname!r}, which torch has "
                            "not extracted (torch.load fails there)")
            target = self.listing.link_target(i)
            if target is None:
                raise Stop(f"{name} is a hard link to {m.linkname!r}, not in the archive "
                            "(torch.load fails there)")
            i, m = target, self.listing.members[target]
        else:
            content = self.regular(m, name, rebuild="extract")
        if chain:
            self.link_finding(name, chain, content)
        content.what = name if not chain else f"{name} ({' ; '.join(chain)})"
        self.extracted[name] = content
        return content

    def extractfile(self, name: str) -> Content:
        """What ``tar.extractfile(name)`` reads: links are followed inside the archive."""
        i = self.listing.last(name)
        if i is None:
            raise Stop(f"tar archive without a {name} member (torch.load fails there)")
        chain: list[str] = []
        seen: set[int] = set()
        m = self.listing.members[i]
        while m.islnk() or m.issym():
            if i in seen:  # torch recurses until RecursionError
                raise Stop(f"{name}: tar links form a loop")
            seen.add(i)
            chain.append(f"{m.name} → {m.linkname}")
            target = self.listing.link_target(i)
            if target is None:
                raise Stop(f"{name} is a {_kind(m)} to {m.linkname!r}, not in the archive "
                            "(torch.load fails there)")
            i, m = target, self.listing.members[target]
        content = self.regular(m, name, rebuild="extractfile")
        if chain:
            self.link_finding(name, chain, content)
        content.what = name if not chain else f"{name} ({' ; '.join(chain)})"
        return content

    def link_finding(self, name: str, chain: list[str], content: Content) -> None:
        self.finding(DANGEROUS, "tar-link",
                     f"{name} is a link ({' ; '.join(chain)}): torch.load reads the bytes it "
                     "leads to, which a scanner that skips links never reads", name)

    def regular(self, m: tarfile.TarInfo, name: str, rebuild: str) -> Content:
        """The bytes of a member that holds data, as tarfile writes or reads them."""
        if m.isdir() or m.isfifo() or m.ischr() or m.isblk():
            if not m.isdir():
                self.finding(DANGEROUS, "tar-special-member",
                             f"{name} is a {_kind(m)}: torch.load would create it and read "
                             "from it (a FIFO blocks, a device is read as root)", name)
            raise Stop(f"{name} is a {_kind(m)}, not a file (torch.load fails there)")
        if m.sparse is None:
            return Content(self.src.data, m.offset_data, m.offset_data + m.size, name, True)
        if m.size > MAX_REBUILT or any(o + n > MAX_REBUILT for o, n in m.sparse):
            raise Stop(f"{name} is a sparse file of {m.size:,} bytes: more than the "
                        f"{MAX_REBUILT >> 20} MiB rebuilt in memory, refused")
        self.finding(DANGEROUS, "tar-sparse-member",
                     f"{name} is a sparse file: torch.load reads it with holes filled, not "
                     "the bytes stored in the archive", name)
        data = self._rebuild_for_extract(m) if rebuild == "extract" else self._rebuild_read(m)
        return Content(data, 0, len(data), name, False)

    def _rebuild_for_extract(self, m: tarfile.TarInfo) -> bytes:
        """TarFile.makefile: each piece written at its offset, then cut to the size."""
        out = bytearray(m.size)
        src, raw = m.offset_data, self.src.data
        for offset, size in m.sparse:
            if src + size > len(raw):
                raise NotTar("ReadError: unexpected end of data")
            if offset < m.size:
                n = min(size, m.size - offset)
                out[offset:offset + n] = raw[src:src + n]
            src += size
        return bytes(out)

    def _rebuild_read(self, m: tarfile.TarInfo) -> bytes:
        """TarFile.extractfile(...).read(): tarfile's own reader over the same bytes."""
        try:
            with self.listing.tar.extractfile(m) as f:  # type: ignore[union-attr]
                return f.read()
        except tarfile.TarError as err:
            raise NotTar(f"{type(err).__name__}: {err}") from None
