"""The items of a DCP folder's ``.distcp`` files (``core/layouts/dcp``): each a
``torch.save`` archive over a byte range, read by the torch-zip reader.

Locally each file is memory-mapped and an item's uncompressed storages are read with
``pread`` where they lie (:class:`ItemRange`). At a URL each file is a
:class:`~ckpt_inspector.core.io.remote.RemoteSource` and each item a
:class:`~ckpt_inspector.core.io.window.WindowSource` over its range: only its structure
is read (its zip directory at its end, ``data.pkl`` at its start), through the file's
block cache; its tensor data is fetched when asked for, a piece at a time. The files are
read concurrently, :data:`REMOTE_READS` at a time, each thread going through its file's
items in file order so that one item's end and the next one's start (neighbours in the
file) come in one request; the tree is still built in ``.metadata``'s order.
"""

from __future__ import annotations

import contextvars
import copy
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import NEEDS_TRUST, Finding
from ckpt_inspector.core.io import paths
from ckpt_inspector.core.io.opening import is_url
from ckpt_inspector.core.io.remote_fs import ServerError
from ckpt_inspector.core.layouts import _dcp_transforms as _transforms
from ckpt_inspector.core.layouts._union import Union, file_size
from ckpt_inspector.core.tensors import DataSource
from ckpt_inspector.core.tree import Checkpoint, Node

METADATA = ".metadata"
REMOTE_READS = 16  # .distcp files read at once over a URL
EDGE = 4 << 10  # an item's structure lies within this many bytes of its start and end

Where = tuple[str, int, int, Any]  # relative_path, offset, length, transforms
Item = tuple[str, Where, "int | None"]  # fqn, where, the bytes of the tensor chunk it holds
Parsed = tuple["Checkpoint | None", "Node | None", "CheckpointError | None"]


MAX_PARSED = 1_000_000


MAX_ALIAS_NODES = 10_000


def _alias(root: Node, fqn: str) -> Node:
    """A second entry's node for bytes already read for another: a copy of that tree (its
    tensors' data shared), or a note where the tree is large."""
    if any(n > MAX_ALIAS_NODES for n, _ in enumerate(root.walk())):
        return Node("value", fqn, "alias", f"<the same bytes as another entry: "
                                           f"{root.key!r}>")
    return _copy(root, fqn)


def _copy(node: Node, key: Any) -> Node:
    twin = copy.copy(node)
    twin.key, twin.parent, twin.children = key, None, []
    for child in node.children:
        twin.add(_copy(child, child.key))
    return twin


def _place(where: Where, expected: int | None) -> tuple[str, int, int, str, int | None]:
    """Where an item's bytes are (and the size a tensor chunk may inflate to)."""
    return where[0], where[1], where[2], repr(where[3]), expected


def _key(fqn: str, where: Where) -> tuple[str, str, int, int]:
    return fqn, where[0], where[1], where[2]


class Files:
    """The ``.distcp`` files, each item read as a torch.save archive over its byte range."""

    def __init__(self, union: Union, folder: str):
        self.union = union
        self.folder = folder
        self.remote = is_url(folder)
        self.seen: dict[str, str | None] = {}  # rel -> problem
        # bytes read, by place (and the size a tensor chunk may inflate to)
        self._parsed: dict[tuple[str, int, int, str, int | None], Parsed] = {}
        self._files: dict[str, Future[tuple[Any, dict[Any, Parsed]]]] = {}

    # -- over a URL: the files read concurrently ---------------------------------------
    @contextmanager
    def reading(self, items: list[Item]) -> Iterator[None]:
        """At a URL, each file's items read in a thread of their own while the tree is
        built; nothing for a local folder."""
        by_file: dict[str, list[Item]] = {}
        for item in items:
            if _inside(item[1][0]):
                by_file.setdefault(item[1][0], []).append(item)
        if not self.remote or not by_file:
            yield
            return
        with ThreadPoolExecutor(min(REMOTE_READS, len(by_file)),
                                thread_name_prefix="distcp") as pool:
            # each in a copy of this context: a cancel token set for the open reaches them
            self._files = {rel: pool.submit(contextvars.copy_context().run, self._read_file,
                                            rel, todo) for rel, todo in by_file.items()}
            try:
                yield
            finally:
                for future in self._files.values():
                    future.cancel()

    def _read_file(self, rel: str, todo: list[Item]) -> tuple[Any, dict[Any, Parsed]]:
        """A remote file (or why it cannot be read) and its items, read in file order."""
        from ckpt_inspector.core.io.remote import RemoteSource

        try:
            src = RemoteSource(paths.join(self.folder, rel))
        except CheckpointError as err:
            return err, {}
        todo = sorted(todo, key=lambda item: item[1][1])
        out: dict[Any, Parsed] = {}
        places: set[Any] = set()
        for i, (fqn, where, expected) in enumerate(todo):
            if _place(where, expected) in places:
                continue  # the same bytes as an item before: read once (see item)
            places.add(_place(where, expected))
            _warm(src, todo, i)
            out[_key(fqn, where)] = self._parse(fqn, where, expected, src)
        return src, out

    def _remote(self, rel: str) -> tuple[Any, dict[Any, Parsed]]:
        future = self._files.get(rel)
        if future is None:  # not planned (a caller outside open): read it now
            future = Future()
            future.set_result(self._read_file(rel, []))
            self._files[rel] = future
        return future.result()

    # -- the files ---------------------------------------------------------------------
    def list_files(self) -> None:
        for rel in sorted(self.seen):
            problem = self.seen[rel]
            if self.remote:
                src = self._remote(rel)[0] if rel in self._files else None
                size = len(src) if src is not None and not isinstance(src, Exception) else 0
                self.union.add_file(rel, size, "distcp", problem=problem)
                if size:
                    self.union.count_transfer(src.transfer.to_json())
                continue
            full = paths.join(self.folder, rel)
            self.union.add_file(rel, file_size(full), "distcp", problem=problem)

    def item(self, fqn: str, where: Where, expected: int | None = None) -> Node:
        """The tree of the torch.save archive at ``where``; its pickles go to the verdict.
        ``expected``: the bytes of the tensor chunk it holds (bounds what it may inflate to)."""
        rel = where[0]
        ckpt = self.union.ckpt
        if not _inside(rel):
            self.seen.setdefault(rel, "outside the folder: not read")
            ckpt.findings.append(Finding(
                NEEDS_TRUST, "shard-outside-folder", f"{METADATA} puts {fqn!r} in {rel!r}, "
                "outside the checkpoint's folder: loading it would read that file", file=rel))
            raise CheckpointError(f"{METADATA} puts it outside the folder ({rel})")
        place = _place(where, expected)
        first = self._parsed.get(place)
        if first is not None:  # the same bytes again: read once, the verdict once
            _part, root, err = first
            if err is not None:
                raise err
            assert root is not None
            return _alias(root, fqn)
        if self.remote:
            src, parsed = self._remote(rel)
            if isinstance(src, ServerError):
                raise src  # the server's failure, not this file's: the others fail alike
            if isinstance(src, CheckpointError):
                self._unreadable(rel, src)
            self.seen.setdefault(rel, None)
            got = parsed.get(_key(fqn, where)) or self._parse(fqn, where, expected, src)
        else:
            full = paths.join(self.folder, rel)
            if not os.path.isfile(full):
                self._unreadable(rel, None)
            self.seen.setdefault(rel, None)
            got = self._parse(fqn, where, expected, full)
        if len(self._parsed) < MAX_PARSED:
            self._parsed[place] = (None, got[1], got[2])
        part, root, err = got
        if part is not None:
            self.union.absorb(rel, part)
        if isinstance(err, ServerError):
            raise err
        if err is not None:  # its pickles were not all read: the verdict cannot be safe
            ckpt.findings.append(Finding(
                NEEDS_TRUST, "unreadable-item", f"{fqn!r} in {rel} cannot be read: {err}; "
                "what loading it would run is unknown", file=rel))
            raise err
        assert root is not None
        return root

    def _unreadable(self, rel: str, err: CheckpointError | None) -> None:
        """A file that is not there (``err`` None, or a 404) or cannot be read: raises."""
        if err is None or "(404)" in str(err):
            if rel not in self.seen:
                self.union.ckpt.warnings.append(f"{rel} is missing: its entries are shown "
                                                "damaged")
            self.seen[rel] = "missing"
            raise CheckpointError(f"its file {rel} is missing")
        if rel not in self.seen:
            self.union.ckpt.warnings.append(f"{rel} cannot be read ({err}): its entries are "
                                            "shown damaged")
            self.union.ckpt.findings.append(Finding(
                NEEDS_TRUST, "unreadable-file", f"{rel} cannot be read: {err}; what loading "
                "it would run is unknown", file=rel))
        self.seen[rel] = str(err)
        raise CheckpointError(f"its file {rel} cannot be read: {err}")

    def _parse(self, fqn: str, where: Where, expected: int | None, file: Any) -> Parsed:
        """(what was read of the item, its tree or None, the error or None): ``file`` a
        local path or a RemoteSource."""
        from ckpt_inspector.core.formats import pickle_file, torch_zip
        from ckpt_inspector.core.pickle import vm as pickle_vm

        rel, offset, length, transforms = where
        try:
            descriptors = _transforms.check(transforms) if transforms else None
            src, raw, fetch = _item_source(file, rel, offset, length, descriptors)
            if descriptors:
                raw = _transforms.inflate(raw, descriptors, _transforms.limit_for(expected))
                src = _bytes_source(f"{rel}@{offset}", raw)
        except CheckpointError as err:
            return None, None, err
        part = Checkpoint(f"{rel}@{offset}", "torch-zip", None)  # type: ignore[arg-type]
        try:
            with pickle_vm.deadline():
                if bytes(src.read(0, 4)) == b"PK\x03\x04":
                    root = torch_zip.read_into(part, src, f"{fqn}/")
                else:  # torch.load(BytesIO) of anything else runs it as a pickle stream
                    # (never as a tar: only a real file is tried as one), of these bytes only
                    part.format = "pickle"
                    if length > MAX_STREAM_BYTES:
                        raise CheckpointError(f"a {length:,}-byte item that is not a zip "
                                              "archive: too large to read as a pickle")
                    whole = _bytes_source(f"{rel}@{offset}", bytes(src.read(0, length)))
                    root = pickle_file.read_stream(part, whole, f"{fqn}/")
        except CheckpointError as err:
            return part, None, CheckpointError(f"{rel} at {offset}: {err}")
        path = file if isinstance(file, str) else file.name
        if descriptors:
            size = len(raw)
            _in_place(root, lambda inner: _transforms.Inflated(
                path, offset, length, descriptors, size, inner, fetch))
        elif isinstance(file, str):
            _in_place(root, lambda inner: ItemRange(path, offset, inner))
        return part, root, None


MAX_STREAM_BYTES = 1 << 30  # an item read as a pickle stream is copied whole, as torch does


def _bytes_source(name: str, raw: Any) -> Any:
    from ckpt_inspector.core.io.source import BytesSource

    return BytesSource(name, raw)


def _item_source(file: Any, rel: str, offset: int, length: int,
                 descriptors: list[str] | None) -> tuple[Any, Any, Callable[[int, int], bytes]
                                                         | None]:
    """(the item as a Source, its raw bytes where they are to be inflated, how to fetch
    them again)."""
    from ckpt_inspector.core.tensors import mapped_file

    size = file_size(file) if isinstance(file, str) else len(file)
    if offset < 0 or length <= 0 or offset + length > size:
        raise CheckpointError(f"{rel} ends before its bytes [{offset}, {offset + length})")
    if isinstance(file, str):
        raw: Any = memoryview(mapped_file(file) if size else b"")[offset:offset + length]
        return _bytes_source(f"{rel}@{offset}", raw), raw, None
    if descriptors:  # a compressed item is inflated whole: fetched whole
        fetch = file.data.fetch
        return None, fetch(offset, offset + length), fetch
    from ckpt_inspector.core.io.window import WindowSource

    return WindowSource(f"{rel}@{offset}", file, offset, length), None, None


def _warm(src: Any, todo: list[Item], i: int) -> None:
    """Bring item ``i``'s end and item ``i + 1``'s start (its neighbour, in most files) into
    the file's block cache in one request; item 0's start first."""
    size = len(src)
    _fqn, (_rel, off, length, transforms), _exp = todo[i]
    if transforms or off < 0 or length <= 0 or off + length > size:
        return
    end = off + length
    if i == 0:
        src.data.read(off, off + min(length, EDGE))
    hi = end
    if i + 1 < len(todo):
        nxt, nlen = todo[i + 1][1][1], todo[i + 1][1][2]
        if 0 <= nxt - end <= EDGE and nlen > 0:
            hi = min(size, nxt + min(nlen, EDGE))
    src.data.read(max(off, end - EDGE), hi)


def _inside(rel: str) -> bool:
    return bool(rel) and "\0" not in rel and not os.path.isabs(rel) and \
        ".." not in rel.replace("\\", "/").split("/")


class ItemRange(DataSource):
    """A storage of an item saved uncompressed: its bytes where they lie in the ``.distcp``
    file (``file_span``: read with ``pread``), found from the record's local header on first
    use; ``inner`` is the zip record over the item's bytes."""

    def __init__(self, path: str, base: int, inner: Any):
        self.path = path
        self.base = base  # where the item starts in the file
        self.inner = inner
        self.nbytes = inner.nbytes
        self.byteorder = inner.byteorder
        self._span: tuple[str, int] | None = None

    def file_span(self) -> tuple[str, int] | None:
        if self._span is None:
            import struct

            info, raw = self.inner.info, self.inner.container
            h = info.header_offset
            if bytes(raw[h:h + 4]) != b"PK\x03\x04":
                raise CheckpointError(f"zip record {info.filename} has a damaged local header")
            name_len, extra_len = struct.unpack_from("<HH", raw, h + 26)
            self._span = (self.path, self.base + h + 30 + name_len + extra_len)
        return self._span

    def buffer(self) -> memoryview:
        return self.inner.buffer()

    def __repr__(self) -> str:
        return f"ItemRange({self.path!r}, {self.base}, {self.nbytes})"


def _in_place(root: Node, make: Callable[[Any], DataSource]) -> None:
    """Replace the storages of an item, zip records over its bytes, by ``make(record)``:
    the record where it lies in the file (:class:`ItemRange`), or inflated again on use."""
    import zipfile

    from ckpt_inspector.core.formats._zip_members import ZipEntryData

    for node in root.walk():
        storage = node.tensor.storage if node.tensor is not None else None
        src = storage.source if storage is not None else None
        if type(src) is ZipEntryData and not isinstance(src.container, str) and \
                src.info.compress_type == zipfile.ZIP_STORED:
            storage.source = make(src)
