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
torch reads it), through a file object that bounds each header record
(:mod:`_tar_listing`).
"""

from __future__ import annotations

import contextlib
import struct
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.dtypes import storage_class_dtype
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import DANGEROUS, Finding
from ckpt_inspector.core.formats._common import build_tree, fail, new_checkpoint, run_pickle
from ckpt_inspector.core.formats._tar_listing import (
    MEMBERS,
    Listing,
    NotTar,
    is_tar,
    list_tar,
)
from ckpt_inspector.core.formats._tar_listing import (
    members_of as members_of,  # tests/test_fuzz.py reads it here
)
from ckpt_inspector.core.formats._tar_members import Content, MemberResolver, Stop
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
from ckpt_inspector.core.tensors import BytesRange
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

NAME = "torch-tar"
MAX_RECORDS = 200_000  # storage or tensor records
MAX_NDIM = 64
# keys torch matches by value; longer ones are kept apart instead of hashed again and again
MAX_KEY_BITS = 64
MAX_KEY_CHARS = 1024
_WRAP = 1 << 64  # torch computes a storage's bytes as a size_t


sniff = is_tar


# -- what torch reads ------------------------------------------------------------------------
def read(src: Source) -> Checkpoint:
    ckpt = new_checkpoint(src, "torch-legacy")
    ckpt.root = read_into(ckpt, src, "")
    return ckpt


def read_into(ckpt: Checkpoint, src: Source, label: str) -> Node:
    try:
        listing = src.cached("tar.listing", lambda: list_tar(src.data))
    except NotTar as err:
        return _fallback(ckpt, src, label, f"Python's tarfile rejects it ({err})")
    except CheckpointError as err:
        raise fail(ckpt, str(err)) from None
    _as_a_stream(ckpt, src, label)
    if listing.last("storages") is None:
        raise fail(ckpt, "tar archive without the storages member of a torch checkpoint "
                         "(torch.load fails on it)")
    if not label:
        ckpt.metadata["container"] = "tar (torch < 0.4)"
    return _TorchTar(ckpt, src, label, listing).run()


def _as_a_stream(ckpt: Checkpoint, src: Source, label: str) -> None:
    """torch tries tar only on a real file: the same bytes given as a stream (``BytesIO``,
    a file opened by fsspec or requests, no descriptor) are read as a pickle stream from
    their first byte. A real tar's first header breaks that stream before it does anything;
    one that imports or calls something makes the file two checkpoints: dangerous, and its
    pickles are scanned as run."""
    from ckpt_inspector.core.formats import pickle_file

    # the first header of a real tar breaks as a pickle at once: decided from the head,
    # without mapping (or, at a URL, fetching) the whole file
    if not pickle_file.sniff(src.head(pickle_file.SNIFF_BYTES)):
        return
    stream = new_checkpoint(src, "pickle")
    unread = False
    try:
        pickle_file.read_stream(stream, src, f"{label}(read as a stream)/")
    except CheckpointError:  # what was read before it broke counts
        unread = not stream.pickles  # (not read at all: too large to fetch whole)
    # a stream that stops at one of the interpreter's bounds was not read: what it does
    # after is unknown (1,001 nested tuples, then the payload, was 'safe')
    if not unread and not any(r.result.globals or r.result.calls or r.limit
                              for r in stream.pickles):
        return
    ckpt.findings.append(Finding(
        DANGEROUS, "tar-and-pickle",
        "a tar archive to torch.load of a file, and a pickle stream that imports or calls "
        "something (or that is too large to read) to torch.load of the same bytes as a "
        "stream (io.BytesIO, a file opened from a URL): the file is both, and the stream "
        "runs", label.rstrip("/") or None))
    ckpt.pickles.extend(stream.pickles)
    ckpt.findings.extend(stream.findings)


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


class _Unfollowable(Exception):
    """Where torch reads the rest of a member depends on what the file computes: that
    member is not read further (the finding says why), the others still are."""


class _TorchTar(MemberResolver):
    def __init__(self, ckpt: Checkpoint, src: Source, label: str, listing: Listing):
        self.ckpt, self.src, self.label, self.listing = ckpt, src, label, listing
        self.objects: dict[Any, Any] = {}
        self.extracted: dict[str, Content] = {}

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
        except NotTar as err:
            # a TarError half way: torch has run what it read so far, then reads the file
            # from its first byte as a pickle stream
            return _fallback(ckpt, self.src, self.label, f"tarfile fails part way ({err})")
        except Stop as err:
            raise fail(ckpt, str(err)) from None
        root = build_tree(ckpt, main.value)
        if not self.label:
            ckpt.metadata["pickle protocol"] = main.protocol
            extra = sorted(set(self.listing.by_name) - set(MEMBERS) - {"sys_info"})
            if extra:
                ckpt.metadata["other members"] = extra[:50]
        return root

    # -- the members' records ------------------------------------------------------------
    def pickle_at(self, content: Content, pos: int, what: str,
                  persistent_load: Any = None) -> PickleResult:
        """One pickle of a member, read from ``pos``; it may run past the member's end in
        the archive's bytes (offsets stay file offsets), but torch reads only the member,
        so a pickle that does is recorded as broken and nothing after it runs."""
        if pos >= content.end:
            raise Stop(f"{content.what} ends before its {what} (torch.load fails there)")
        try:
            result = run_pickle(self.ckpt, content.data, f"{self.label}{what}", pos,
                                persistent_load, expect_end=False)
        except CheckpointError as err:
            raise Stop(str(err)) from None
        if result.end > content.end:
            self.ckpt.pickles[-1].error = (f"the pickle runs {result.end - content.end:,} bytes "
                                           f"past the end of {content.what}")
            raise Stop(f"a pickle runs past the end of {content.what} (torch.load fails "
                        "there)")
        return result

    def storages(self, content: Content) -> None:
        with contextlib.suppress(_Unfollowable):  # the finding is made: the next member
            self._storages(content)

    def _storages(self, content: Content) -> None:
        raw, end = content.data, content.end
        count = self.pickle_at(content, content.start, "storages")
        pos = count.end
        n = self._count(count.value, "storages")
        for i in range(n):
            if i >= MAX_RECORDS:
                raise Stop(f"more than {MAX_RECORDS:,} storage records: refused")
            args = self.pickle_at(content, pos, f"storages#{i}")
            pos = args.end
            try:
                key, location, stype = args.value
            except (TypeError, ValueError):
                raise Stop("malformed storage record in the tar archive") from None
            dtype = self._storage_dtype(stype, f"storages#{i}")
            item = dtypes.itemsize(dtype) or 1
            if pos + 8 > end:
                raise Stop("storage data is truncated (torch.load fails there)")
            (numel,) = struct.unpack_from("<q", raw, pos)
            # torch's reader multiplies in 64 bits: a count of 2**62 four-byte elements
            # is 0 bytes to it, and the next record starts right after the count
            nbytes = (item * numel) % _WRAP
            st = StorageInfo(_text(key), dtype, max(numel, 0), _text(location))
            if nbytes != item * numel:
                self.finding(DANGEROUS, "storage-size-overflow",
                             f"storage record {i} claims {numel:,} elements of {item} bytes, "
                             f"which torch's reader computes in 64 bits as {nbytes:,} bytes: "
                             "it reads the records that follow from where no writer puts "
                             "them", "storages")
                st.numel = nbytes // item
                st.problem = "its size overflows torch's 64-bit arithmetic"
            if pos + 8 + nbytes > end:
                st.numel = 0
                st.problem = "storage data runs past its tar member"
                pos = end
            else:
                st.source = content.range(self.src, pos + 8, nbytes)
                pos += 8 + nbytes
            self.objects[_key(key)] = st
        if pos < end:
            views = self.pickle_at(content, pos, "storage views")
            self.views(content, views.value)

    def _count(self, value: Any, member: str) -> int:
        """A record count as torch's ``range(count)`` takes it. One the stream computes
        (a call, known only when it runs) decides where torch reads every record after
        it: the file is refused rather than read by a guess."""
        if isinstance(value, int):
            return max(value, 0)
        if isinstance(value, (Call, GlobalRef, ExtensionRef)):
            self._unfollowable(f"the number of records in {member} is computed when the "
                               "file loads", member)
        raise Stop(f"the record count is a {type(value).__name__} (torch.load fails there)")

    def _storage_dtype(self, stype: Any, where: str) -> str:
        """The dtype torch reads a storage record as: ``storage_type._dtype`` of a torch
        storage class. Its element size says where the next record starts."""
        if isinstance(stype, GlobalRef) and stype.literal:
            dtype = storage_class_dtype(stype.name)
            if stype.name.rsplit(".", 1)[-1] == "UntypedStorage":
                raise Stop("an UntypedStorage record (it has no dtype: torch.load fails "
                           "there)")
            if dtype is not None:
                return dtype
            self._unfollowable(f"the storage type {stype.name} is not one of torch's "
                               "storage classes, so its element size is not known", where)
        if isinstance(stype, (Call, GlobalRef, ExtensionRef, PersistentRef)):
            self._unfollowable("the storage type is an object made when the file loads, "
                               "so its element size is not known", where)
        raise Stop(f"the storage type is a {type(stype).__name__} (torch.load fails there)")

    def _unfollowable(self, why: str, member: str) -> None:
        self.finding(DANGEROUS, "unfollowable-records",
                     f"{why}: where torch reads the next records (and unpickles them with "
                     "the full unpickler) cannot be known without running the file",
                     member.split("#")[0])
        self.ckpt.warnings.append(f"{member.split('#')[0]}: {why}; the rest of that member "
                                  "is not read")
        raise _Unfollowable()

    def views(self, content: Content, value: Any) -> None:
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

    def tensors(self, content: Content) -> None:
        with contextlib.suppress(_Unfollowable):
            self._tensors(content)

    def _tensors(self, content: Content) -> None:
        raw, end = content.data, content.end
        count = self.pickle_at(content, content.start, "tensors")
        pos = count.end
        n = self._count(count.value, "tensors")
        for i in range(n):
            if i >= MAX_RECORDS:
                raise Stop(f"more than {MAX_RECORDS:,} tensor records: refused")
            args = self.pickle_at(content, pos, f"tensors#{i}")
            pos = args.end
            try:
                key, storage_key, _tensor_type = args.value
            except (TypeError, ValueError):
                raise Stop("malformed tensor record in the tar archive") from None
            if pos + 8 > end:
                raise Stop("tensor record is truncated (torch.load fails there)")
            (ndim,) = struct.unpack_from("<i", raw, pos)
            size = 16 + 16 * ndim
            if ndim < 0 or pos + size > end:
                raise Stop("malformed tensor record in the tar archive")
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

