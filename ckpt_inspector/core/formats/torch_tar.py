"""The tar format of torch before 0.4, which ``torch.load`` still reads (and runs).

Members: ``storages`` (a count, then per storage a pickled ``(key, location,
storage type)`` followed by an 8-byte element count and the raw data, then a
pickled list of storage views), ``tensors`` (a count, then per tensor a
pickled ``(key, storage key, type)`` followed by ndim, sizes, strides and
offset as little-endian integers) and ``pickle`` (the object, whose persistent
ids name those tensors and storages). Read as ``torch-legacy``, without
extracting anything.

The archive is read the way torch's ``_legacy_load`` reads it, because a
reader that resolves members differently scans other bytes than torch runs:

- torch first tries ``tarfile.open``; any file whose first 512 bytes Python's
  tarfile takes for a header (V7, GNU, ustar or pax: only the checksum has to
  hold) goes down this path, and when tarfile fails with a ``TarError``
  anywhere on it, torch reads the whole file as a pickle stream instead;
- ``getmember`` finds the *last* member of a name;
- ``storages`` and ``tensors`` are extracted into a temporary folder and
  opened there, so a link is made on disk first (a symbolic link is followed
  by the file system, possibly out of the archive); ``pickle`` is read with
  ``extractfile``, which follows hard and symbolic links inside the archive.

Python's own tarfile lists the members (so every header dialect is read as
torch reads it), through a file object that bounds each header record.
"""

from __future__ import annotations

import bisect
import os
import posixpath
import struct
import tarfile
import time
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.dtypes import storage_class_dtype
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import DANGEROUS, NEEDS_TRUST, Finding
from ckpt_inspector.core.formats._common import build_tree, fail, new_checkpoint, run_pickle
from ckpt_inspector.core.io.source import Source
from ckpt_inspector.core.pickle.rebuild import check_tensor
from ckpt_inspector.core.pickle.values import (
    Call,
    ExtensionRef,
    GlobalRef,
    PersistentRef,
    PickleResult,
    safe_key,
)
from ckpt_inspector.core.tensors import BytesRange, DataSource
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

MEMBERS = ("storages", "tensors", "pickle")
MAX_MEMBERS = 100_000
# what tarfile may read for one member's headers (pax records, GNU long names, sparse maps)
MAX_HEADER_BYTES = 1 << 20
# Python < 3.11.10 parses pax records with a regex that is quadratic in a run of digits
# (CVE-2024-6232); real records hold numbers of at most ~20 digits
MAX_DIGIT_RUN = 256
MAX_REBUILT = 256 << 20  # a sparse member, rebuilt in memory as tarfile would write it
MAX_RECORDS = 200_000  # storage or tensor records
MAX_NDIM = 64
LIST_SECONDS = 20.0
# keys torch matches by value; longer ones are kept apart instead of hashed again and again
MAX_KEY_BITS = 64
MAX_KEY_CHARS = 1024


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


sniff = is_tar


# -- listing ---------------------------------------------------------------------------------
class _NotTar(Exception):
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


def _list(data: Any) -> Listing:
    """The members, as ``tarfile.open(mode="r:")`` and ``getmembers()`` read them.

    Raises :class:`_NotTar` where tarfile raises a TarError, CheckpointError where a
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
        raise _NotTar(f"{type(err).__name__}: {err}") from None
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
        listing = src.cached("tar.listing", lambda: _list(src.data))
    except _NotTar as err:
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


def is_torch_tar(members: dict[str, Any]) -> bool:
    """Whether ``torch.load`` runs pickles from this tar: it extracts ``storages`` first
    (whatever kind of member it is), and reads a file tarfile refuses as a pickle stream."""
    if getattr(members, "tar_error", None):
        return True
    return "storages" in getattr(members, "names", members)


# -- what torch reads ------------------------------------------------------------------------
@dataclass
class _Content:
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


class _Stop(Exception):
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


def read(src: Source) -> Checkpoint:
    ckpt = new_checkpoint(src, "torch-legacy")
    ckpt.root = read_into(ckpt, src, "")
    return ckpt


def read_into(ckpt: Checkpoint, src: Source, label: str) -> Node:
    try:
        listing = src.cached("tar.listing", lambda: _list(src.data))
    except _NotTar as err:
        return _fallback(ckpt, src, label, f"Python's tarfile rejects it ({err})")
    except CheckpointError as err:
        raise fail(ckpt, str(err)) from None
    if listing.last("storages") is None:
        raise fail(ckpt, "tar archive without the storages member of a torch checkpoint "
                         "(torch.load fails on it)")
    if not label:
        ckpt.metadata["container"] = "tar (torch < 0.4)"
    return _TorchTar(ckpt, src, label, listing).run()


def _fallback(ckpt: Checkpoint, src: Source, label: str, why: str) -> Node:
    """torch's answer to a TarError on the tar path: read the file as a pickle stream."""
    from ckpt_inspector.core.formats import pickle_file

    ckpt.findings.append(Finding(
        DANGEROUS, "tar-fallback",
        f"the file starts with a tar header but {why}: torch.load then reads the whole file "
        "as a pickle stream, so the file is both", label.rstrip("/") or None))
    if not label:
        ckpt.metadata["container"] = "tar header, read as a pickle stream"
    return pickle_file.read_stream(ckpt, src, label)


class _TorchTar:
    def __init__(self, ckpt: Checkpoint, src: Source, label: str, listing: Listing):
        self.ckpt, self.src, self.label, self.listing = ckpt, src, label, listing
        self.objects: dict[Any, Any] = {}
        self.extracted: dict[str, _Content] = {}

    def finding(self, severity: str, code: str, message: str, member: str) -> None:
        self.ckpt.findings.append(Finding(severity, code, message, self.label + member))

    def run(self) -> Node:
        ckpt = self.ckpt
        for name in MEMBERS:
            copies = self.listing.by_name.get(name, [])
            if len(copies) > 1:
                self.finding(DANGEROUS, "duplicate-member",
                             f"{len(copies)} members are named {name}: torch reads the last "
                             "one, a scanner that takes the first reads other bytes", name)
        try:
            storages = self.extract("storages")
            self.storages(storages)
            tensors = self.extract("tensors")
            self.tensors(tensors)
            main = self.main_pickle()
        except _NotTar as err:
            # a TarError half way: torch has run what it read so far, then reads the file
            # from its first byte as a pickle stream
            return _fallback(ckpt, self.src, self.label, f"tarfile fails part way ({err})")
        except _Stop as err:
            raise fail(ckpt, str(err)) from None
        root = build_tree(ckpt, main.value)
        if not self.label:
            ckpt.metadata["pickle protocol"] = main.protocol
            extra = sorted(set(self.listing.by_name) - set(MEMBERS) - {"sys_info"})
            if extra:
                ckpt.metadata["other members"] = extra[:50]
        return root

    # -- resolving members ---------------------------------------------------------------
    def extract(self, name: str) -> _Content:
        """What ``tar.extract(name, tmpdir)`` leaves at ``tmpdir/name`` and torch opens."""
        i = self.listing.last(name)
        if i is None:
            raise _Stop(f"tar archive without a {name} member (torch.load fails there)")
        chain: list[str] = []
        seen: set[int] = set()
        m = self.listing.members[i]
        while m.islnk() or m.issym():
            if i in seen:
                raise _Stop(f"{name}: tar links form a loop")
            seen.add(i)
            chain.append(f"{m.name} → {m.linkname}")
            path = posixpath.normpath(m.linkname) if m.linkname else "."
            if m.linkname.startswith("/") or path == ".." or path.startswith("../"):
                self.finding(DANGEROUS, "tar-link",
                             f"{name} is a {_kind(m)} to {m.linkname!r}, outside the archive: "
                             "torch.load reads that file of the loading machine as "
                             f"{name} ({' ; '.join(chain)}); what it holds cannot be checked",
                             name)
                raise _Stop(f"{name} is a link out of the archive")
            if path in self.extracted:  # the file torch extracted before this one
                content = self.extracted[path]
                break
            if m.issym():
                # made on disk and opened there: it names nothing torch has extracted
                raise _Stop(f"{name} is a symbolic link to {m.linkname!r}, which torch has "
                            "not extracted (torch.load fails there)")
            target = self.listing.link_target(i)
            if target is None:
                raise _Stop(f"{name} is a hard link to {m.linkname!r}, not in the archive "
                            "(torch.load fails there)")
            i, m = target, self.listing.members[target]
        else:
            content = self.regular(m, name, rebuild="extract")
        if chain:
            self.link_finding(name, chain, content)
        content.what = name if not chain else f"{name} ({' ; '.join(chain)})"
        self.extracted[name] = content
        return content

    def extractfile(self, name: str) -> _Content:
        """What ``tar.extractfile(name)`` reads: links are followed inside the archive."""
        i = self.listing.last(name)
        if i is None:
            raise _Stop(f"tar archive without a {name} member (torch.load fails there)")
        chain: list[str] = []
        seen: set[int] = set()
        m = self.listing.members[i]
        while m.islnk() or m.issym():
            if i in seen:  # torch recurses until RecursionError
                raise _Stop(f"{name}: tar links form a loop")
            seen.add(i)
            chain.append(f"{m.name} → {m.linkname}")
            target = self.listing.link_target(i)
            if target is None:
                raise _Stop(f"{name} is a {_kind(m)} to {m.linkname!r}, not in the archive "
                            "(torch.load fails there)")
            i, m = target, self.listing.members[target]
        content = self.regular(m, name, rebuild="extractfile")
        if chain:
            self.link_finding(name, chain, content)
        content.what = name if not chain else f"{name} ({' ; '.join(chain)})"
        return content

    def link_finding(self, name: str, chain: list[str], content: _Content) -> None:
        self.finding(DANGEROUS, "tar-link",
                     f"{name} is a link ({' ; '.join(chain)}): torch.load reads the bytes it "
                     "leads to, which a scanner that skips links never reads", name)

    def regular(self, m: tarfile.TarInfo, name: str, rebuild: str) -> _Content:
        """The bytes of a member that holds data, as tarfile writes or reads them."""
        if m.isdir() or m.isfifo() or m.ischr() or m.isblk():
            if not m.isdir():
                self.finding(DANGEROUS, "tar-special-member",
                             f"{name} is a {_kind(m)}: torch.load would create it and read "
                             "from it (a FIFO blocks, a device is read as root)", name)
            raise _Stop(f"{name} is a {_kind(m)}, not a file (torch.load fails there)")
        if m.sparse is None:
            return _Content(self.src.data, m.offset_data, m.offset_data + m.size, name, True)
        if m.size > MAX_REBUILT or any(o + n > MAX_REBUILT for o, n in m.sparse):
            raise _Stop(f"{name} is a sparse file of {m.size:,} bytes: more than the "
                        f"{MAX_REBUILT >> 20} MiB rebuilt in memory, refused")
        self.finding(DANGEROUS, "tar-sparse-member",
                     f"{name} is a sparse file: torch.load reads it with holes filled, not "
                     "the bytes stored in the archive", name)
        data = self._rebuild_for_extract(m) if rebuild == "extract" else self._rebuild_read(m)
        return _Content(data, 0, len(data), name, False)

    def _rebuild_for_extract(self, m: tarfile.TarInfo) -> bytes:
        """TarFile.makefile: each piece written at its offset, then cut to the size."""
        out = bytearray(m.size)
        src, raw = m.offset_data, self.src.data
        for offset, size in m.sparse:
            if src + size > len(raw):
                raise _NotTar("ReadError: unexpected end of data")
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
            raise _NotTar(f"{type(err).__name__}: {err}") from None

    # -- the members' records ------------------------------------------------------------
    def pickle_at(self, content: _Content, pos: int, what: str,
                  persistent_load: Any = None) -> PickleResult:
        """One pickle of a member, read from ``pos``; it may run past the member's end in
        the archive's bytes (offsets stay file offsets), but torch reads only the member,
        so a pickle that does is recorded as broken and nothing after it runs."""
        if pos >= content.end:
            raise _Stop(f"{content.what} ends before its {what} (torch.load fails there)")
        try:
            result = run_pickle(self.ckpt, content.data, f"{self.label}{what}", pos,
                                persistent_load, expect_end=False)
        except CheckpointError as err:
            raise _Stop(str(err)) from None
        if result.end > content.end:
            self.ckpt.pickles[-1].error = (f"the pickle runs {result.end - content.end:,} bytes "
                                           f"past the end of {content.what}")
            raise _Stop(f"a pickle runs past the end of {content.what} (torch.load fails "
                        "there)")
        return result

    def storages(self, content: _Content) -> None:
        raw, end = content.data, content.end
        count = self.pickle_at(content, content.start, "storages")
        pos = count.end
        n = _count(count.value)
        i = 0
        while n is None or i < n:
            if i >= MAX_RECORDS:
                raise _Stop(f"more than {MAX_RECORDS:,} storage records: refused")
            if n is None and pos >= end:
                break
            args = self.pickle_at(content, pos, f"storages#{i}")
            pos = args.end
            if n is None and isinstance(args.value, list):  # the views: the count was computed
                self.views(content, args.value)
                return
            try:
                key, location, stype = args.value
            except (TypeError, ValueError):
                raise _Stop("malformed storage record in the tar archive") from None
            name = stype.name if isinstance(stype, GlobalRef) and stype.literal else ""
            dtype = storage_class_dtype(name) or "uint8"
            item = dtypes.itemsize(dtype) or 1
            if pos + 8 > end:
                raise _Stop("storage data is truncated (torch.load fails there)")
            (numel,) = struct.unpack_from("<q", raw, pos)
            nbytes = numel * item
            st = StorageInfo(_text(key), dtype, max(numel, 0), _text(location))
            if numel < 0 or pos + 8 + nbytes > end:
                st.numel = 0
                st.problem = "storage data runs past its tar member"
                pos = end
            else:
                st.source = content.range(self.src, pos + 8, nbytes)
                pos += 8 + nbytes
            self.objects[_key(key)] = st
            i += 1
        if pos < end:
            views = self.pickle_at(content, pos, "storage views")
            self.views(content, views.value)

    def views(self, content: _Content, value: Any) -> None:
        for view in value if isinstance(value, list) else []:
            try:
                target, root_key, offset, numel = view
                root = self.objects[_key(root_key)]
            except (TypeError, ValueError, KeyError):
                self.ckpt.warnings.append("a malformed storage view was skipped")
                continue
            item = dtypes.itemsize(root.dtype) or 1
            ok = _small(offset, root.numel) and _small(numel, root.numel)
            st = StorageInfo(_text(target), root.dtype, numel if ok else 0, root.location)
            if ok and root.source is not None and (offset + numel) * item <= root.source.nbytes:
                src = root.source
                if isinstance(src, BytesRange):
                    st.source = BytesRange(src.data, src.offset + offset * item, numel * item)
                else:
                    st.source = self.src.range(getattr(src, "offset", 0) + offset * item,
                                                numel * item)
            else:
                st.problem = "storage view lies outside its storage"
            self.objects[_key(target)] = st

    def tensors(self, content: _Content) -> None:
        raw, end = content.data, content.end
        count = self.pickle_at(content, content.start, "tensors")
        pos = count.end
        n = _count(count.value)
        i = 0
        while n is None or i < n:
            if i >= MAX_RECORDS:
                raise _Stop(f"more than {MAX_RECORDS:,} tensor records: refused")
            if n is None and pos >= end:
                break
            args = self.pickle_at(content, pos, f"tensors#{i}")
            pos = args.end
            try:
                key, storage_key, _tensor_type = args.value
            except (TypeError, ValueError):
                raise _Stop("malformed tensor record in the tar archive") from None
            if pos + 8 > end:
                raise _Stop("tensor record is truncated (torch.load fails there)")
            (ndim,) = struct.unpack_from("<i", raw, pos)
            size = 16 + 16 * ndim
            if ndim < 0 or pos + size > end:
                raise _Stop("malformed tensor record in the tar archive")
            storage = self.objects.get(_key(storage_key))
            if ndim > MAX_NDIM:
                info = TensorInfo(storage.dtype if storage else "unknown", (), None, 0, storage)
                info.problem = f"{ndim:,} dimensions: more than {MAX_NDIM}, not read"
            else:
                sizes = struct.unpack_from(f"<{ndim}q", raw, pos + 8)
                strides = struct.unpack_from(f"<{ndim}q", raw, pos + 8 + 8 * ndim)
                (offset,) = struct.unpack_from("<q", raw, pos + 8 + 16 * ndim)
                info = TensorInfo(storage.dtype if storage else "unknown", sizes, strides,
                                  offset, storage,
                                  device=storage.location if storage else "unknown")
                info.problem = check_tensor(info, offset, storage)
            pos += size
            self.objects[_key(key)] = info
            i += 1

    def main_pickle(self) -> PickleResult:
        content = self.extractfile("pickle")
        objects = self.objects

        def persistent_load(pid: Any, offset: int) -> Any:
            if isinstance(pid, tuple) and pid:
                return pid[0]  # a module class, saved with its source
            if isinstance(pid, str) and len(pid) > MAX_KEY_CHARS:
                return PersistentRef(pid, offset)
            try:
                return objects[_key(int(pid))]
            except (KeyError, ValueError, TypeError, OverflowError):
                return PersistentRef(pid, offset)

        main = self.pickle_at(content, content.start, "pickle", persistent_load)
        self.ckpt.pickles[-1].trailing = content.end - main.end
        return main


def _count(value: Any) -> int | None:
    """A record count as torch's ``range(count)`` takes it; None when the stream computes
    it (a call whose result is only known when it runs)."""
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, (Call, GlobalRef, ExtensionRef)):
        return None
    raise _Stop(f"the record count is a {type(value).__name__} (torch.load fails there)")


def _small(value: Any, limit: int) -> bool:
    return isinstance(value, int) and 0 <= value <= limit


class _Opaque:
    """A key too long to hash each time it is looked up: equal only to itself."""

    __slots__ = ()


def _key(key: Any) -> Any:
    """A storage or tensor key as a dict key: ints and strings as they are, anything that
    would be slow or impossible to hash as a key nothing else matches."""
    if type(key) is int:
        return key if key.bit_length() <= MAX_KEY_BITS else _Opaque()
    if type(key) is str:
        return key if len(key) <= MAX_KEY_CHARS else _Opaque()
    try:
        hash(safe_key(key))
        return safe_key(key)
    except (TypeError, ValueError):
        return _Opaque()


def _text(value: Any) -> str:
    """A key or location for display, bounded (``str`` of a huge int is refused or slow)."""
    if isinstance(value, int) and value.bit_length() > MAX_KEY_BITS:
        return f"<int of {value.bit_length():,} bits>"
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "…"
    if isinstance(value, (bytes, float, bool, type(None), int)):
        return str(value)[:200]
    return f"<{type(value).__name__}>"

