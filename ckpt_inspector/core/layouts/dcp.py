"""``torch.distributed.checkpoint`` (DCP) folders: ``.metadata`` and ``*.distcp`` files.

What FSDP, torchtitan, Lightning's sharded strategies (a ``.ckpt`` *folder*) and
``dcp.save`` write: a folder whose ``.metadata`` (a pickle of
``torch.distributed.checkpoint.metadata.Metadata``) lists every entry by its
fully-qualified name (``model.layer.weight``, ``optim.state.0.exp_avg``, ``step``) and says
where each piece lies: ``storage_data`` maps (name, chunk offsets) to
``(relative_path, offset, length)`` in one of the ``.distcp`` files, one file per rank
and writer thread.

``.metadata`` goes through our pickle interpreter (never ``pickle.load``) and is scanned
like any pickle; DCP's own metadata classes are known data classes in that stream only
(:data:`ckpt_inspector.core.calls.DCP_METADATA_CLASSES`). Each item in a ``.distcp`` file
is, with the default ``torch_save`` serialization, a ``torch.save`` archive (a zip) at
``[offset, offset + length)``: read by the torch-zip reader over that byte range, every
pickle interpreted and scanned. Tensor entries become tensors; bytes entries (``step``,
optimizer ``param_groups``...) are ``torch.save``'d objects, shown as their values.

A tensor saved in several chunks (DTensor / ShardedTensor shards from several ranks) is
one logical tensor of the full size whose ``pieces`` say where each chunk is; its data
source (:class:`~ckpt_inspector.core.layouts._stitch.StitchedSource`) reads it in C order
a piece at a time, each piece gathered from the chunks that cover it. Storages of items
saved uncompressed are read with ``pread`` at their place in the ``.distcp`` file
(:class:`ItemRange`), so a pass over a large checkpoint keeps one piece resident, not
the pages of a memory map.
"""

from __future__ import annotations

import builtins
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.calls import DCP_METADATA_CLASSES
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import NEEDS_TRUST, Finding
from ckpt_inspector.core.layouts import _dcp_transforms as _transforms
from ckpt_inspector.core.layouts._stitch import StitchedSource, tiling_problem
from ckpt_inspector.core.layouts._union import Union, file_size
from ckpt_inspector.core.pickle.values import Call, GlobalRef
from ckpt_inspector.core.tensors import DataSource
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

NAME = "dcp"
METADATA = ".metadata"
SUFFIX = ".distcp"
MAX_METADATA = 1 << 30  # a .metadata larger than this is refused
M = "torch.distributed.checkpoint.metadata."


def _has_distcp(folder: str, names: list[str] | None = None) -> bool:
    names = os.listdir(folder) if names is None else names
    return any(n.endswith(SUFFIX) for n in names)


def detect(path: str) -> bool:
    if os.path.isdir(path):
        names = os.listdir(path)
        return METADATA in names and os.path.isfile(os.path.join(path, METADATA)) and \
            _has_distcp(path, names)
    if os.path.basename(path) == METADATA and os.path.isfile(path):
        return _has_distcp(os.path.dirname(path) or ".")
    return False


# -- the metadata, as inert values -------------------------------------------------------
def _state(value: Any, cls: str) -> dict[str, Any] | None:
    """The fields of a dataclass instance the stream builds (NEWOBJ + BUILD of a dict)."""
    if isinstance(value, Call) and value.func_name == cls and isinstance(value.state, dict):
        return value.state
    return None


def _ints(value: Any) -> tuple[int, ...] | None:
    """A ``torch.Size`` (REDUCE of torch.Size with a tuple), or a plain tuple/list of ints."""
    if isinstance(value, Call) and value.func_name == "torch.Size" and value.args:
        value = value.args[0]
    if isinstance(value, (tuple, list)) and all(type(v) is int and v >= 0 for v in value):
        return tuple(value)
    return None


def _dtype(props: Any) -> str | None:
    state = _state(props, M + "TensorProperties")
    first = state.get("dtype") if state is not None else None
    if state is None and isinstance(props, Call) and props.func_name == M + "TensorProperties":
        raw = props.state  # TensorProperties.__getstate__: (dtype, layout, grad, fmt, pin)
        first = raw[0] if isinstance(raw, tuple) and raw else None
    if isinstance(first, GlobalRef) and first.literal and str(first.module) == "torch":
        return str(first.name)
    return None


@dataclass
class Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    where: tuple[str, int, int, Any] | None = None  # relative_path, offset, length, transforms


@dataclass
class Entry:
    fqn: str
    kind: str  # tensor | bytes
    dtype: str | None = None
    size: tuple[int, ...] = ()
    chunks: list[Chunk] = field(default_factory=list)
    where: tuple[str, int, int, Any] | None = None  # of a bytes entry


def _storage(value: Any) -> dict[tuple[str, Any], tuple[str, int, int, Any]]:
    """``storage_data``: (fqn, chunk offsets or None) -> (file, offset, length, transforms)."""
    out: dict[tuple[str, Any], tuple[str, int, int, Any]] = {}
    items = value.items() if isinstance(value, dict) else ()
    for index, info in items:
        key = _state(index, M + "MetadataIndex")
        where = _state(info, "torch.distributed.checkpoint.filesystem._StorageInfo")
        if key is None or where is None or not isinstance(key.get("fqn"), str):
            continue
        rel, off, length = (where.get(k) for k in ("relative_path", "offset", "length"))
        if isinstance(rel, str) and type(off) is int and type(length) is int:
            out[(key["fqn"], _ints(key.get("offset")))] = (
                rel, off, length, where.get("transform_descriptors"))
    return out


def _entries(meta: dict[str, Any]) -> tuple[list[Entry], list[str]]:
    """The entries ``state_dict_metadata`` lists, each with where its bytes are; and the
    names of those it lists in a form this reader does not know."""
    storage = _storage(meta.get("storage_data"))
    entries: list[Entry] = []
    odd: list[str] = []
    sdm = meta.get("state_dict_metadata")
    for fqn, md in (sdm.items() if isinstance(sdm, dict) else ()):
        if not isinstance(fqn, str):
            continue
        if _state(md, M + "BytesStorageMetadata") is not None or (
                isinstance(md, Call) and md.func_name == M + "BytesStorageMetadata"):
            entries.append(Entry(fqn, "bytes", where=storage.get((fqn, None))))
            continue
        state = _state(md, M + "TensorStorageMetadata")
        size = _ints(state.get("size")) if state else None
        if state is None or size is None:
            odd.append(fqn)
            continue
        entry = Entry(fqn, "tensor", _dtype(state.get("properties")), size)
        for chunk in state.get("chunks") or ():
            cs = _state(chunk, M + "ChunkStorageMetadata") or {}
            offsets, sizes = _ints(cs.get("offsets")), _ints(cs.get("sizes"))
            if offsets is None or sizes is None:
                continue
            entry.chunks.append(Chunk(offsets, sizes, storage.get((fqn, offsets))))
        entries.append(entry)
    return entries, odd


# -- reading ---------------------------------------------------------------------------------
def _read_metadata(union: Union, folder: str) -> dict[str, Any]:
    from ckpt_inspector.core.formats._common import run_pickle
    from ckpt_inspector.core.pickle import vm as pickle_vm

    ckpt = union.ckpt
    full = os.path.join(folder, METADATA)
    size = file_size(full)
    union.add_file(METADATA, size, "pickle")
    if size > MAX_METADATA:
        raise CheckpointError(f"{METADATA} is {size:,} bytes: more than the "
                              f"{MAX_METADATA:,} ckpt-inspector reads")
    with builtins.open(full, "rb") as f:  # this module's open() reads a layout
        raw = f.read()
    try:
        with pickle_vm.deadline():
            result = run_pickle(ckpt, raw, "")  # findings name the file (record.file)
    except CheckpointError as err:
        wrapped = CheckpointError(f"{METADATA}: {err}")
        wrapped.partial = ckpt
        raise wrapped from None
    finally:
        for record in ckpt.pickles:
            record.file = METADATA
            record.known_classes = DCP_METADATA_CLASSES
    fields = _state(result.value, M + "Metadata")
    if fields is None:
        err = CheckpointError(f"{METADATA} holds no torch.distributed.checkpoint Metadata")
        err.partial = ckpt  # its pickle still counts for the verdict
        raise err
    return fields


def open(path: str) -> Checkpoint:  # every layout has detect(path) and open(path)
    folder = path if os.path.isdir(path) else (os.path.dirname(path) or ".")
    union = Union(path, NAME, NAME)
    ckpt = union.ckpt
    try:
        meta = _read_metadata(union, folder)
    except OSError as err:
        raise CheckpointError(f"cannot read {METADATA}: {err}") from None
    entries, odd = _entries(meta)
    for fqn in odd:
        ckpt.findings.append(Finding("info", "dcp-metadata", f"{fqn!r}: an entry of a kind "
                                     "this reader does not know: not shown", file=METADATA))
    ckpt.metadata["dcp version"] = meta.get("version")
    ckpt.metadata["entries"] = len(entries)
    reader = _Files(union, folder)
    for entry in entries:
        try:
            node = _tensor(reader, entry) if entry.kind == "tensor" else _bytes(reader, entry)
        except CheckpointError as err:
            node = _damaged(entry, str(err))
        union.put(entry.fqn, node, node.tensor.file if node.tensor and node.tensor.file
                  else _first_file(entry))
    reader.list_files()
    return ckpt


def _first_file(entry: Entry) -> str:
    where = entry.where or next((c.where for c in entry.chunks if c.where), None)
    return where[0] if where else METADATA


def _damaged(entry: Entry, problem: str) -> Node:
    info = TensorInfo(entry.dtype or "unknown", entry.size, problem=problem,
                      file=_first_file(entry))
    if entry.kind == "bytes":
        return Node("truncated", entry.fqn, note=problem)
    return Node("tensor", entry.fqn, "torch.Tensor", tensor=info)


class _Files:
    """The ``.distcp`` files, each item read as a torch.save archive over its byte range."""

    def __init__(self, union: Union, folder: str):
        self.union = union
        self.folder = folder
        self.seen: dict[str, str | None] = {}  # rel -> problem

    def list_files(self) -> None:
        for rel in sorted(self.seen):
            problem = self.seen[rel]
            full = os.path.join(self.folder, rel)
            self.union.add_file(rel, file_size(full), "distcp", problem=problem)

    def item(self, fqn: str, where: tuple[str, int, int, Any],
             expected: int | None = None) -> Node:
        """The tree of the torch.save archive at ``where``; its pickles go to the verdict.
        ``expected``: the bytes of the tensor chunk it holds (bounds what it may inflate to)."""
        from ckpt_inspector.core.formats import torch_zip
        from ckpt_inspector.core.io.source import BytesSource
        from ckpt_inspector.core.pickle import vm as pickle_vm
        from ckpt_inspector.core.tensors import mapped_file

        rel, offset, length, transforms = where
        ckpt = self.union.ckpt
        if not _inside(rel):
            self.seen.setdefault(rel, "outside the folder: not read")
            ckpt.findings.append(Finding(
                NEEDS_TRUST, "shard-outside-folder", f"{METADATA} puts {fqn!r} in {rel!r}, "
                "outside the checkpoint's folder: loading it would read that file", file=rel))
            raise CheckpointError(f"{METADATA} puts it outside the folder ({rel})")
        full = os.path.join(self.folder, rel)
        if not os.path.isfile(full):
            if rel not in self.seen:
                ckpt.warnings.append(f"{rel} is missing: its entries are shown damaged")
            self.seen[rel] = "missing"
            raise CheckpointError(f"its file {rel} is missing")
        self.seen.setdefault(rel, None)
        descriptors = _transforms.check(transforms) if transforms else None
        data = mapped_file(full) if file_size(full) else b""
        if offset < 0 or length <= 0 or offset + length > len(data):
            raise CheckpointError(f"{rel} ends before its bytes [{offset}, {offset + length})")
        raw: Any = memoryview(data)[offset:offset + length]
        if descriptors:
            raw = _transforms.inflate(raw, descriptors, _transforms.limit_for(expected))
        part = Checkpoint(f"{rel}@{offset}", "torch-zip", None)  # type: ignore[arg-type]
        src = BytesSource(part.path, raw)
        try:
            with pickle_vm.deadline():
                root = torch_zip.read_into(part, src, f"{fqn}/")
        except CheckpointError as err:
            self._absorb(rel, part)
            raise CheckpointError(f"{rel} at {offset}: {err}") from None
        self._absorb(rel, part)
        if descriptors:
            size = len(raw)
            _in_place(root, lambda inner: _transforms.Inflated(full, offset, length,
                                                               descriptors, size, inner))
        else:
            _in_place(root, lambda inner: ItemRange(full, offset, inner))
        return root

    def _absorb(self, rel: str, part: Checkpoint) -> None:
        self.union.absorb(rel, part)


def _inside(rel: str) -> bool:
    return bool(rel) and "\0" not in rel and not os.path.isabs(rel) and \
        ".." not in rel.replace("\\", "/").split("/")


def _bytes(reader: _Files, entry: Entry) -> Node:
    if entry.where is None:
        raise CheckpointError(f"{METADATA} says nowhere where it is")
    node = reader.item(entry.fqn, entry.where)
    for n in node.walk():
        if n.tensor is not None:
            n.tensor.file = entry.where[0]
    return node


def _tensor(reader: _Files, entry: Entry) -> Node:
    if not entry.chunks:
        if math.prod(entry.size) == 0:
            info = TensorInfo(entry.dtype or "unknown", entry.size, file=METADATA)
            return Node("tensor", entry.fqn, "torch.Tensor", tensor=info)
        raise CheckpointError(f"{METADATA} lists no chunk of it")
    pieces: list[tuple[Chunk, TensorInfo]] = []
    for chunk in entry.chunks:
        if chunk.where is None:
            raise CheckpointError(f"{METADATA} says nowhere where its chunk at "
                                  f"{list(chunk.offsets)} is")
        node = reader.item(entry.fqn, chunk.where,
                           math.prod(chunk.sizes) * (dtypes.itemsize(entry.dtype or '') or 8))
        info = node.tensor
        if info is None:
            raise CheckpointError(f"{chunk.where[0]} holds a {node.type_name or node.kind} "
                                  "where a tensor chunk should be")
        info.file = chunk.where[0]
        if tuple(info.shape) != chunk.sizes:
            raise CheckpointError(f"a chunk of shape {list(info.shape)} in {info.file} where "
                                  f"{METADATA} says {list(chunk.sizes)}")
        if entry.dtype is not None and info.dtype != entry.dtype:
            raise CheckpointError(f"a chunk of dtype {info.dtype} in {info.file} where "
                                  f"{METADATA} says {entry.dtype}")
        if len(entry.chunks) == 1 and chunk.sizes == entry.size and not any(chunk.offsets):
            return node
        pieces.append((chunk, info))
    return _stitched(entry, pieces)


def _stitched(entry: Entry, pieces: list[tuple[Chunk, TensorInfo]]) -> Node:
    dtype = entry.dtype or pieces[0][1].dtype
    info = TensorInfo(dtype, entry.size, device=pieces[0][1].device, file=pieces[0][1].file)
    info.pieces = [{"file": p.file, "offsets": list(c.offsets), "shape": list(c.sizes)}
                   for c, p in pieces]
    problem = tiling_problem(entry.size, [(c.offsets, c.sizes) for c, _p in pieces])
    if problem:
        info.problem = (f"its {len(pieces)} chunks do not tile its shape "
                        f"{list(entry.size)}: {problem}")
    else:
        source = StitchedSource(entry.size, dtype, pieces)
        info.storage = StorageInfo(entry.fqn, dtype, math.prod(entry.size), info.device,
                                   source)
    return Node("tensor", entry.fqn, "torch.Tensor", tensor=info)


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
