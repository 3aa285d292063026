"""Archives that hold checkpoints: a zip or tar of model files, as people send them.

``torch.load`` cannot open such a file, but the checkpoints inside can be
extracted and loaded, so each member that is a checkpoint is read in place
(nothing is extracted to disk) and its findings are reported under its name.
Archives nest up to :data:`MAX_DEPTH` levels. A file compressed whole (gzip, bzip2,
xz, LZMA, zlib: a ``.pkl.gz``, a compressed joblib file, a ``.tar.gz``) is an archive
of one member, unpacked as its loaders unpack it (``_unpack``); wrappers this reader
does not unpack (7z, zstd, rar) are refused with the reason, never called safe.

Members are told apart from a bounded prefix (a compressed member is never inflated
whole just to see what it is); one is read whole only when it is a checkpoint, within
a budget of inflated bytes per archive. A member that parses as a pickle is a pickle,
whatever its first byte and whatever else its first bytes look like.
"""

from __future__ import annotations

import contextlib
import mmap
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

from ckpt_inspector.core.errors import CheckpointError, PickleError
from ckpt_inspector.core.findings import DANGEROUS, NEEDS_TRUST, Finding
from ckpt_inspector.core.formats import (
    _joblib,
    _npz_view,
    _quota,
    _tar_listing,
    _unpack,
    _zip,
    _zip_audit,
    _zip_members,
)
from ckpt_inspector.core.formats._common import fail, new_checkpoint
from ckpt_inspector.core.io.source import BytesSource, Source, span
from ckpt_inspector.core.pickle import vm as pickle_vm
from ckpt_inspector.core.tree import ARCHIVE_SUFFIX, Checkpoint, Node

MAX_DEPTH = 3
MAX_MEMBER_BYTES = 1 << 30  # a member read whole (stored members are views, not copies)
MAX_INFLATE_MEMBER = 256 << 20  # a compressed member inflated into memory
MAX_INFLATE_TOTAL = 1 << 30  # everything inflated for one archive, one member at a time
SNIFF_BYTES = 64 << 10

WRAPPERS = (
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"Rar!\x1a\x07", "rar"),
    (b"\x04\x22\x4d\x18", "lz4"),  # joblib.load unpacks it where the lz4 package is installed
)


def wrapper_kind(head: bytes) -> str | None:
    kind = _unpack.kind_of(head)
    if kind is not None:
        return kind
    for magic, kind in WRAPPERS:
        if head.startswith(magic):
            return kind
    return None


def sniff_wrapped(head: bytes) -> bool:
    """A file compressed whole: by its magic, or a zlib or LZMA header whose first bytes
    unpack (``x`` and ``]`` start other files too)."""
    kind = wrapper_kind(head)
    return kind is not None and (kind not in ("zlib", "lzma", "joblib-zfile")
                                 or _unpack.starts(head, kind))


def read_wrapped(src: Source) -> Checkpoint:
    """A file that starts like a compressed wrapper: ``torch.load`` unpickles whatever is
    not a zip or a tar, and "BZh" also starts a pickle (BINBYTES), so one that parses (or
    imports something before it breaks) is read as a pickle; one this reader unpacks is
    an archive of one member; anything else is refused, with the reason, never called
    safe."""
    from ckpt_inspector.core.formats import pickle_file

    kind = wrapper_kind(src.head()) or "compressed"
    unpacked = kind in _unpack.UNPACKED and _unpack.unpacks(src.data, kind)
    if pickle_file.sniff(src.head()):
        try:
            ckpt = pickle_file.read(src)
        except CheckpointError as err:
            if err.partial is not None and err.partial.pickles and \
                    err.partial.pickles[0].result.globals:
                if unpacked:
                    _polyglot(err.partial, src, kind)
                raise
        else:
            if unpacked:
                _polyglot(ckpt, src, kind)
            return ckpt
    if unpacked:
        return read_unpacked(src, kind)
    raise refuse_wrapper(kind)


def _polyglot(ckpt: Checkpoint, src: Source, kind: str) -> None:
    """A pickle to torch.load and pickle.load that also unpacks ("BZh" starts both a bz2
    stream and BINBYTES): joblib.load and bz2.open read the other file, which counts too."""
    try:
        other = read_unpacked(src, kind)
    except CheckpointError as err:
        other = err.partial
    ckpt.findings.append(Finding(
        DANGEROUS, "polyglot", f"the file is a pickle to torch.load and pickle.load, and "
        f"{kind}-compressed data to joblib.load and {kind} readers: they read other things"))
    if other is not None:
        ckpt.pickles.extend(other.pickles)
        ckpt.findings.extend(other.findings)


def read_unpacked(src: Source, kind: str) -> Checkpoint:
    """A file compressed whole, as an archive of the one file it holds."""
    ckpt = new_checkpoint(src, "archive")
    ckpt.metadata["container"] = kind
    root = Node("dict", None, kind + ARCHIVE_SUFFIX)
    quota = _quota.current()
    root.add(_unpacked(ckpt, src.data, kind, _unpack.inner_name(src.name), "", 0,
                       [MAX_INFLATE_TOTAL], quota))
    quota.report(ckpt.findings, None)
    ckpt.root = root
    return ckpt


def _unpacked(ckpt: Checkpoint, raw: Any, kind: str, name: str, label: str, depth: int,
              budget: list[int], quota: _quota.PickleQuota) -> Node:
    """The node of what a compressed stream holds, unpacked within the archive's budget;
    whatever it holds is run by the loaders that unpack it (joblib.load, pandas'
    read_pickle, pickle.load of gzip.open), whatever its name."""
    where = label + name
    cap = max(0, min(MAX_INFLATE_MEMBER, budget[0]))
    out = _unpack.unpack(raw, kind, cap)
    budget[0] -= len(out.data)
    if out.over:  # its first bytes are read all the same: a payload there is found
        ckpt.findings.append(Finding(
            NEEDS_TRUST, "unscanned-member",
            f"{name} unpacks to more than the {cap >> 20} MiB this reader unpacks: only "
            "those were scanned", where))
    if out.error:
        ckpt.metadata.setdefault("unpacked", []).append(f"{where}: {out.error}")
    data = out.data
    m = _Member(name, len(data), lambda: data[:SNIFF_BYTES], lambda: data, False)
    count = len(ckpt.pickles)
    token = _joblib.ZFILE.set(kind == "joblib-zfile")  # joblib's compat unpickler reads it
    try:
        node = _member_node(ckpt, m, f"{where}/", depth, budget, quota, runs=True)
    finally:
        _joblib.ZFILE.reset(token)
    node.key = name
    if out.over:  # a stream cut at the cap breaks there for this reader only
        for record in ckpt.pickles[count:]:
            if record.error:
                ckpt.findings.append(Finding(
                    NEEDS_TRUST, "unscanned-member", f"{record.member or name}: read up to "
                    f"the cap, where it breaks for this reader only: {record.error}", where))
                record.error = None
    if out.error and node.note is None:
        node.note = out.error
    return node


def refuse_wrapper(kind: str) -> CheckpointError:
    return CheckpointError(f"a {kind}-compressed file: ckpt-inspector does not unpack {kind}; "
                           "extract it and open the files inside")


class _Member:
    """One member: its name, declared size, a bounded prefix and a way to read it whole."""

    def __init__(self, name: str, size: int, head: Callable[[], bytes],
                 whole: Callable[[], Any], compressed: bool):
        self.name, self.size = name, size
        self._head, self._whole = head, whole
        self.compressed = compressed
        self._head_bytes: bytes | None = None

    @property
    def head(self) -> bytes:
        if self._head_bytes is None:
            self._head_bytes = self._head()
        return self._head_bytes


def read(src: Source, kind: str) -> Checkpoint:
    ckpt = new_checkpoint(src, "archive")
    ckpt.metadata["container"] = kind
    ckpt.root = read_into(ckpt, src, "", kind, 0)
    members = [str(n.key) for n in ckpt.root.children]
    if kind == "zip" and members and all(m.endswith(".npy") for m in members):
        ckpt.metadata["container"] = "npz"  # numpy.savez's: numpy.load reads it
    return ckpt


def read_into(ckpt: Checkpoint, src: Source, label: str, kind: str, depth: int,
              budget: list[int] | None = None) -> Node:
    root = Node("dict", None, kind + ARCHIVE_SUFFIX)
    budget = budget if budget is not None else [MAX_INFLATE_TOTAL]
    quota = _quota.current()
    for m in _members(ckpt, src, kind, label):
        where = label + m.name
        if not quota.allows(m.name):
            continue
        if m.size > MAX_MEMBER_BYTES:
            ckpt.findings.append(Finding(NEEDS_TRUST, "unscanned-member",
                                         f"{m.name} ({m.size:,} bytes) is too large to scan inside "
                                         "an archive: extract it and open it", where))
            root.add(Node("value", m.name, "member", f"<not scanned: {m.size:,} bytes>"))
            continue
        try:
            node = _member_node(ckpt, m, f"{where}/", depth, budget, quota)
        except (_zip_members.MemberError, OSError, tarfile.TarError) as err:
            ckpt.findings.append(Finding(NEEDS_TRUST, "unscanned-member",
                                         f"{m.name} could not be read: {err}", where))
            continue
        node.key = m.name
        root.add(node)
    quota.report(ckpt.findings, label.rstrip("/") or None)
    if kind == "tar":
        zipped = _zip_over_tar(ckpt, src, label, depth, budget)
        if zipped is not None:
            root.add(zipped)
    return root


def _zip_over_tar(ckpt: Checkpoint, src: Source, label: str, depth: int,
                  budget: list[int]) -> Node | None:
    """A tar that Python's zipfile (and unzip) also open, from a zip directory at its end
    that is not one member's data: extracted as a zip, it yields other files than tar
    gives. Such a polyglot is dangerous and its zip members are scanned too."""
    infos, _why = _zip_audit.zipfile_view(src.data)
    if not infos:
        return None
    try:
        spans = [(m.offset_data, m.offset_data + m.size)
                 for m in _tar_listing.members_of(ckpt, src).values()]
    except CheckpointError:
        spans = []
    offsets = [i.header_offset for i in infos]
    first = min(offsets)
    if any(first == a and all(a <= o < b for o in offsets) for a, b in spans):
        # a zip member of the tar (a torch.save file), which starts with the zip's first
        # record: read as a zip in its own right. A zip that starts further into a
        # member's data ("notes.txt": some text, then a zip) is read by no one as that
        # member, yet zipfile and unzip open the tar as it.
        return None
    ckpt.findings.append(Finding(
        DANGEROUS, "polyglot",
        "the tar archive is also a zip archive (Python's zipfile and unzip open it from the "
        "directory at its end): extracted as a zip it yields other files than tar does",
        label.rstrip("/") or None))
    node = read_into(ckpt, src, f"{label}(as zip)/", "zip", depth + 1, budget)
    node.key = "(as zip)"
    return node


def _members(ckpt: Checkpoint, src: Source, kind: str, label: str) -> Iterator[_Member]:
    raw = src.data
    if kind == "zip":
        try:
            directory = _zip.directory_of(src)
            entries: list[Any] = list(directory.entries)
            entries += _zip_audit.audit(ckpt, raw, directory, label)
        except _zip.ZipError as err:
            infos, why = _zip_audit.zipfile_view(raw)
            if infos is None:
                raise fail(ckpt, f"damaged zip archive: {err}; {why}") from None
            entries = [_zip_audit.as_entry(i, n) for n, i in enumerate(infos)]
        unpacker = _zip_audit.ZipfileReader(raw)
        for e in entries:
            # a directory's record holds nothing; a record named "" or "x/" that holds
            # bytes is a member to zipfile (numpy.load of an .npz reads it)
            if e.file_size == 0:
                continue
            if e.compress_type not in (_zip.STORED, _zip.DEFLATED):
                other = _other_method(ckpt, unpacker, e, label)
                if other is not None:
                    yield other
                continue
            yield _Member(e.filename, e.file_size,
                          lambda e=e: _zip_members.read_prefix(raw, e, SNIFF_BYTES, clamp=True),
                          lambda e=e: _zip_whole(ckpt, raw, e, label),
                          e.compress_type != _zip.STORED)
    else:
        for name, m in _tar_listing.members_of(ckpt, src).items():
            start, size = m.offset_data, m.size
            if start + size > len(raw):
                raise _zip_members.MemberError(f"{name} runs past the end of the archive")
            yield _Member(name, size,
                          lambda s=start, n=size: bytes(raw[s:s + min(n, SNIFF_BYTES)]),
                          lambda s=start, n=size: span(raw, s, s + n), False)


# what Python's zipfile also unpacks (torch's reader does not: only zipfile-based loaders,
# numpy.load of an .npz among them, read such members)
ZIPFILE_METHODS = {12: "bzip2", 14: "lzma"}


def _other_method(ckpt: Checkpoint, unpacker: _zip_audit.ZipfileReader, e: Any,
                  label: str) -> _Member | None:
    """A member compressed with bzip2 or LZMA, unpacked by zipfile (its prefix to tell what
    it is, the whole within the archive's inflation budget); any other method is a finding:
    not scanned, never safe."""
    method = ZIPFILE_METHODS.get(e.compress_type)
    if method is None:
        ckpt.findings.append(Finding(
            NEEDS_TRUST, "unscanned-member",
            f"{e.filename} is compressed with method {e.compress_type}: not unpacked",
            label + e.filename))
        return None
    name = e.filename
    return _Member(name, e.file_size,
                   lambda: unpacker.read(name, SNIFF_BYTES, whole=False),
                   lambda: unpacker.read(name, MAX_INFLATE_MEMBER), True)


def _zip_whole(ckpt: Checkpoint, raw: Any, entry: Any, label: str) -> Any:
    # extracted with zipfile or unzip, a member may run past the end of the file
    start, end, local = _zip_members.data_span(raw, entry, clamp=True)
    if local != entry.filename:
        ckpt.findings.append(_zip_members.name_mismatch(entry, local, label + entry.filename))
    if entry.compress_type == _zip.STORED:
        return span(raw, start, min(start + entry.file_size, len(raw)))
    return _zip_members.inflate(raw, start, end, entry.file_size, entry.filename, exact=False)[0]


def _whole(ckpt: Checkpoint, m: _Member, label: str, budget: list[int],
           copy: bool = False) -> Any | None:
    """The member's bytes (a view of a stored zip member unless ``copy``: readers that
    need ``bytes``), or None with a finding when they would have to be inflated or copied
    past the per-member cap or the archive's budget."""
    if m.compressed or copy:
        if m.size > min(MAX_INFLATE_MEMBER, budget[0]):
            ckpt.findings.append(_zip_members.unscanned(
                m.name, m.size, min(MAX_INFLATE_MEMBER, max(budget[0], 0)), label.rstrip("/"),
                " (or copies) for a member of an archive"))
            return None
        budget[0] -= m.size
    data = m._whole()
    return _as_bytes(data) if copy else data


def _member_node(ckpt: Checkpoint, m: _Member, label: str, depth: int,
                 budget: list[int], quota: _quota.PickleQuota, runs: bool = False) -> Node:
    """The tree of one member: a checkpoint's own tree, or a note of what it is. ``runs``:
    a pickle it holds is run by its loader whatever its name (a compressed file's)."""
    from ckpt_inspector.core.formats import (
        npy,
        pickle_file,
        safetensors_fmt,
        torch_legacy,
        torch_tar,
    )

    head, name = m.head, m.name
    path = f"{ckpt.path}!{label}"
    named = runs or _pickle_like_name(name)
    # tarfile takes 512 zero bytes for an empty archive, from which torch.load gets nothing
    tar = torch_tar.sniff(head) and bool(head[:512].strip(b"\0"))
    try:
        if npy.sniff(head):  # numpy.load of an .npz reads any member with its magic
            quota.read += 1
            data = _whole(ckpt, m, label, budget)
            if data is None:
                return Node("value", None, "member", "<not scanned: over the inflation budget>")
            return npy.read_into(ckpt, BytesSource(path, data), label)
        if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or tar:
            kind = "tar" if tar else "zip"
            quota.read += 1
            data = _whole(ckpt, m, label, budget, copy=tar)
            if data is None:
                return Node("value", None, "member", "<not scanned: over the inflation budget>")
            return _nested(ckpt, path, data, kind, label, depth, budget)
        if torch_legacy.sniff(head):
            quota.read += 1
            data = _whole(ckpt, m, label, budget, copy=True)
            if data is None:
                return Node("value", None, "member", "<not scanned: over the inflation budget>")
            return torch_legacy.read_into(ckpt, BytesSource(path, data), label)
        kind = wrapper_kind(head) if sniff_wrapped(head) else None
        pickled = pickle_file.sniff(head)
        if kind in _unpack.UNPACKED and depth + 1 < MAX_DEPTH:
            data = _whole(ckpt, m, label, budget)
            if data is None:
                return Node("value", None, "member", "<not scanned: over the inflation budget>")
            if _unpack.unpacks(data, kind):  # ("BZh" also starts a pickle: BINBYTES)
                if pickled and _runs_as_pickle(data):
                    _member_polyglot(ckpt, path, data, label, kind)
                inner = _unpack.inner_name(name)
                node = Node("dict", None, kind + ARCHIVE_SUFFIX)
                node.add(_unpacked(ckpt, data, kind, inner, label, depth + 1, budget, quota))
                return node
        if kind and not pickled:
            ckpt.findings.append(Finding(NEEDS_TRUST, "unscanned-member",
                                         f"{name} is {kind}-compressed and was not unpacked",
                                         label.rstrip("/")))
            return Node("value", None, "member", f"<{kind} data, not unpacked>")
        # a pickle first: no other format's sniff may hide one
        data = _pickle_bytes(ckpt, m, label, budget, named, quota)
        if data is not None:
            quota.read += 1
            # a pickle whatever its name; one not named like a checkpoint is not something
            # a loader would run, so only what it imports counts
            return pickle_file.read_into(ckpt, BytesSource(path, data), label, executed=named)
        if safetensors_fmt.sniff(head):
            return Node("value", None, "member", "<safetensors file: holds no code>")
        return Node("bytes", None, "member", b"", note=f"{m.size:,} bytes, not a checkpoint")
    except CheckpointError as err:
        ckpt.findings.append(Finding(NEEDS_TRUST, "unreadable-member",
                                     f"{name} could not be read: {err}", label.rstrip("/")))
        return Node("value", None, "member", f"<unreadable: {err}>")


def _runs_as_pickle(data: Any) -> bool:
    """Whether pickle.load of the whole of ``data`` reads to its end or does something
    before it breaks (a bz2 stream's "BZh9" is a BINBYTES far longer than the data: it
    breaks at once, having done nothing)."""
    try:
        pickle_vm.load(data)
    except PickleError as err:
        return err.result is not None and bool(err.result.globals or err.result.calls)
    return True


def _member_polyglot(ckpt: Checkpoint, path: str, data: Any, label: str, kind: str) -> None:
    """A member that is a pickle and also unpacks: both readings count."""
    from ckpt_inspector.core.formats import pickle_file

    ckpt.findings.append(Finding(
        DANGEROUS, "polyglot", f"{label.rstrip('/')} is a pickle to torch.load and "
        f"pickle.load, and {kind}-compressed data to joblib.load and {kind} readers",
        label.rstrip("/")))
    with contextlib.suppress(CheckpointError):  # what it read stays recorded, for the scan
        pickle_file.read_into(ckpt, BytesSource(path, bytes(data)), f"{label}(as a pickle)/")


def _nested(ckpt: Checkpoint, path: str, data: Any, kind: str, label: str, depth: int,
            budget: list[int]) -> Node:
    from ckpt_inspector.core.formats import pt2, torch_tar, torch_zip

    nested = BytesSource(path, data if kind == "zip" or isinstance(data, bytes) else bytes(data))
    if kind == "zip":
        shape = zip_kind(nested)
        if shape in ("torch-zip", "pt2"):
            node = (torch_zip if shape == "torch-zip" else pt2).read_into(ckpt, nested, label)
            _npz_view.scan(ckpt, nested, label, shape)  # numpy.load of it, once extracted
            return node
    elif _tar_listing.is_torch_tar(_tar_listing.members_of(ckpt, nested)):
        return torch_tar.read_into(ckpt, nested, label)
    if depth + 1 >= MAX_DEPTH:
        ckpt.findings.append(Finding(NEEDS_TRUST, "unscanned-member",
                                     f"{label.rstrip('/')}: archives nested deeper than "
                                     f"{MAX_DEPTH} levels are not opened", label.rstrip("/")))
        return Node("value", None, "member", "<archive not opened: nested too deep>")
    return read_into(ckpt, nested, label, kind, depth + 1, budget)


def _pickle_bytes(ckpt: Checkpoint, m: _Member, label: str, budget: list[int],
                  named: bool, quota: _quota.PickleQuota) -> bytes | None:
    """The member's bytes when it is a pickle: one that parses up to STOP (a member named
    like a checkpoint), or that imports something (any member); tried on the prefix first,
    read whole only when the prefix is a pickle that goes on."""
    from ckpt_inspector.core.formats import pickle_file
    from ckpt_inspector.core.formats.torch_zip import _worth_recording

    head = m.head
    if not head:
        return None
    data: Any = head
    whole_read = False
    while True:
        try:
            result = pickle_vm.load(data)
        except PickleError as err:
            if _quota.ran_out(err):
                quota.late(m.name)  # not tried: the file's time ran out
                return None
            cut = not whole_read and len(data) < m.size and (
                "truncated" in err.reason or "missing end" in err.reason
                or (err.offset or 0) >= len(data) - 9
                # joblib's arrays: pickle.load breaks at their bytes, joblib.load reads on
                or (err.result is not None and _joblib.applies(err.result)))
            if cut:
                whole = _whole(ckpt, m, label, budget, copy=True)
                if whole is None:
                    return None
                data, whole_read = whole, True
                continue
            partial = err.result
            if (partial is not None and _worth_recording(partial)) or (
                    named and pickle_file.sniff(head)):
                return _as_bytes(data)  # a broken pickle: read so the scan reports it
            return None
        if named or _worth_recording(result):
            return _as_bytes(data)
        return None


def _as_bytes(data: Any) -> Any:
    """``data`` as something that slices to bytes: bytes, or a map (an unpacked file's),
    as they are; a view copied."""
    return data if isinstance(data, (bytes, mmap.mmap)) else bytes(data)


def zip_kind(src: Source) -> str:
    """``pt2`` for torch.export archives, ``torch-zip`` when torch finds a ``data.pkl``
    (or the zip has a ``<root>/data.pkl``), else ``archive``. Records are listed the way
    torch lists them (Python's zipfile where torch's reader refuses the zip)."""
    return src.cached("zip.kind", lambda: _zip_kind(src))


def _zip_kind(src: Source) -> str:
    try:
        directory = _zip.directory_of(src)
    except _zip.ZipError:
        infos, _why = _zip_audit.zipfile_view(src.data)
        if infos is None:
            return "torch-zip"  # let the torch reader report what is wrong with it
        return _kind_of_names([i.orig_filename for i in infos])
    return _kind_of(directory)


def _kind_of(directory: _zip.Directory) -> str:
    # torch.export.save never writes a data.pkl nor torch.save an archive_format or the
    # older pt2 layout: a file with both is read as pt2, whose reader also interprets the
    # data.pkl torch.load runs (torch.export.load's fallback runs the older layout's
    # records whatever else the archive holds)
    if directory.record("archive_format") is not None:
        return "pt2"
    names = [e.filename for e in directory.entries]
    from ckpt_inspector.core.formats.pt2 import is_pt2

    if is_pt2(names):
        return "pt2"
    if directory.record("data.pkl") is not None:
        return "torch-zip"
    return _kind_of_names(names)


def _kind_of_names(names: list[str]) -> str:
    from ckpt_inspector.core.formats.pt2 import is_pt2

    if is_pt2(names):
        return "pt2"
    if any(n.lower().endswith("/data.pkl") and n.count("/") == 1 for n in names):
        return "torch-zip"
    return "archive"



def _pickle_like_name(name: str) -> bool:
    """Bare pickles are recognised by name inside archives (their first byte says little)."""
    return name.lower().endswith((".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".p",
                                  ".joblib", ".dat", ".data"))


def tar_kind(src: Source) -> str:
    """``torch-tar`` when ``torch.load`` runs pickles from this tar, else ``archive-tar``."""
    # one that cannot be listed goes to the torch reader, which says what is wrong with it
    return "archive-tar" if _tar_listing.runs_pickles(src) is False else "torch-tar"
