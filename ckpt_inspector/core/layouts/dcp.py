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
(:class:`~ckpt_inspector.core.layouts._dcp_items.ItemRange`), so a pass over a large
checkpoint keeps one piece resident, not the pages of a memory map.

At a URL (``s3://bucket/ckpt``, ``hf://owner/repo/ckpt``: a folder that lists; over plain
HTTP the URL of ``.metadata`` itself, whose storage entries name the ``.distcp`` files):
``.metadata`` is read whole, each item's structure over its byte range, the files
concurrently (:mod:`~ckpt_inspector.core.layouts._dcp_items`); tensor data when asked for.
"""

from __future__ import annotations

import builtins
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.calls import DCP_METADATA_CLASSES
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import NEEDS_TRUST, Finding
from ckpt_inspector.core.io import paths
from ckpt_inspector.core.io.opening import is_url
from ckpt_inspector.core.io.remote_fs import ServerError
from ckpt_inspector.core.layouts._dcp_items import METADATA, Files, Item
from ckpt_inspector.core.layouts._stitch import StitchedSource, tiling_problem
from ckpt_inspector.core.layouts._union import Union, file_size
from ckpt_inspector.core.pickle.values import Call, GlobalRef, short_repr
from ckpt_inspector.core.summary import counted
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

NAME = "dcp"
SUFFIX = ".distcp"
MAX_METADATA = 1 << 30  # a .metadata larger than this is refused
M = "torch.distributed.checkpoint.metadata."


def _has_distcp(folder: str, names: list[str] | None = None) -> bool:
    names = paths.listdir(folder) if names is None else names
    return any(n.endswith(SUFFIX) for n in names)


def detect(path: str) -> bool:
    if is_url(path) and paths.basename(path) == METADATA:
        return True  # no request: its storage entries name the data files (plain HTTP)
    if paths.isdir(path):
        names = paths.listdir(path)
        return METADATA in names and paths.isfile(paths.join(path, METADATA)) and \
            _has_distcp(path, names)
    if paths.basename(path) == METADATA and paths.isfile(path):
        return _has_distcp(paths.dirname(path))
    return False


# -- the metadata, as inert values -------------------------------------------------------
# the dataclasses' fields in order, for one built by calling the class (REDUCE, NEWOBJ with
# arguments): the instance is the same to DCP
FIELDS = {
    M + "MetadataIndex": ("fqn", "offset", "index"),
    "torch.distributed.checkpoint.filesystem._StorageInfo": (
        "relative_path", "offset", "length", "transform_descriptors"),
}


def _state(value: Any, cls: str) -> dict[str, Any] | None:
    """The fields of a dataclass instance the stream builds: NEWOBJ + BUILD of a dict, or
    the class called with its fields (positional or keyword; a BUILD after it wins)."""
    if not (isinstance(value, Call) and value.func_name == cls):
        return None
    fields: dict[str, Any] = {}
    names = FIELDS.get(cls)
    if names is not None and isinstance(value.args, tuple) and len(value.args) <= len(names):
        fields.update(zip(names, value.args))
    if isinstance(value.kwargs, dict):
        fields.update({k: v for k, v in value.kwargs.items() if isinstance(k, str)})
    if isinstance(value.state, dict):
        fields.update(value.state)
    elif value.state is not None:
        return None
    return fields if fields or isinstance(value.state, dict) else None


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


def _storage(value: Any, odd: list[str]) -> dict[tuple[str, Any], tuple[str, int, int, Any]]:
    """``storage_data``: (fqn, chunk offsets or None) -> (file, offset, length, transforms);
    ``odd`` gets a line for each entry of a form this reader does not know."""
    out: dict[tuple[str, Any], tuple[str, int, int, Any]] = {}
    if value is not None and not isinstance(value, dict):
        odd.append("storage_data is not a dict")
    items = value.items() if isinstance(value, dict) else ()
    for index, info in items:
        key = _state(index, M + "MetadataIndex")
        where = _state(info, "torch.distributed.checkpoint.filesystem._StorageInfo")
        if key is None or where is None or not isinstance(key.get("fqn"), str):
            odd.append(f"a storage entry for {short_repr(index)}")
            continue
        rel, off, length = (where.get(k) for k in ("relative_path", "offset", "length"))
        if isinstance(rel, str) and type(off) is int and type(length) is int:
            out[(key["fqn"], _ints(key.get("offset")))] = (
                rel, off, length, where.get("transform_descriptors"))
        else:
            odd.append(f"the storage entry of {key['fqn']!r}")
    return out


def _entries(meta: dict[str, Any], unread: list[str]) -> tuple[list[Entry], list[str]]:
    """The entries ``state_dict_metadata`` lists, each with where its bytes are; and the
    names of those it lists in a form this reader does not know (``unread`` gets the
    storage entries it cannot read)."""
    storage = _storage(meta.get("storage_data"), unread)
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
    ckpt = union.ckpt
    raw = _metadata_bytes(union, paths.join(folder, METADATA), METADATA)
    try:
        result = _run_metadata(ckpt, raw, METADATA)
    except CheckpointError as err:
        wrapped = CheckpointError(f"{METADATA}: {err}")
        wrapped.partial = ckpt
        raise wrapped from None
    fields = _state(result.value, M + "Metadata")
    if fields is None:
        err = CheckpointError(f"{METADATA} holds no torch.distributed.checkpoint Metadata")
        err.partial = ckpt  # its pickle still counts for the verdict
        raise err
    return fields


def _run_metadata(ckpt: Checkpoint, raw: bytes, name: str) -> Any:
    """Interpret one metadata pickle (DCP's classes known in it), its records naming
    ``name``; a broken one raises, its record kept for the scan."""
    from ckpt_inspector.core.formats._common import run_pickle
    from ckpt_inspector.core.pickle import vm as pickle_vm

    count = len(ckpt.pickles)
    try:
        with pickle_vm.deadline():
            return run_pickle(ckpt, raw, "" if name == METADATA else name)
    finally:
        for record in ckpt.pickles[count:]:
            record.file = name
            record.known_classes = DCP_METADATA_CLASSES


MAX_RANK_METADATA = 64


def _rank_metadata(union: Union, folder: str) -> None:
    """Each rank's own metadata file (``__0.metadata``): torch.distributed.checkpoint.load
    falls back to unpickling it when ``.metadata`` fails to load, so its pickles count for
    the verdict too (a local folder: nothing lists a folder at a URL)."""
    if is_url(folder):
        return
    try:
        names = sorted(n for n in paths.listdir(folder)
                       if n.startswith("__") and n.endswith(METADATA) and n != METADATA)
    except OSError:
        return
    for name in names[:MAX_RANK_METADATA]:
        full = paths.join(folder, name)
        try:
            raw = _metadata_bytes(union, full, name)
        except (OSError, CheckpointError) as err:  # not read at all
            union.unreadable(name, full, CheckpointError(str(err)), shown=False)
            continue
        with contextlib.suppress(CheckpointError):  # a broken one's record stays, for the scan
            _run_metadata(union.ckpt, raw, name)
    if len(names) > MAX_RANK_METADATA:
        union.ckpt.findings.append(Finding(
            NEEDS_TRUST, "unread-files", f"more than {MAX_RANK_METADATA} per-rank metadata "
            "files: only the first were read for the verdict"))


def _metadata_bytes(union: Union, full: str, name: str) -> bytes:
    """A metadata file whole (at a URL: one request where it is under 128 KiB)."""
    if is_url(full):
        from ckpt_inspector.core.io.remote import RemoteSource

        src = RemoteSource(full)
        size = len(src)
    else:
        size = file_size(full)
    union.add_file(name, size, "pickle")
    if size > MAX_METADATA:
        raise CheckpointError(f"{name} is {size:,} bytes: more than the "
                              f"{MAX_METADATA:,} ckpt-inspector reads")
    if is_url(full):
        raw = src.read(0, size)
        union.count_transfer(src.transfer.to_json())
        return raw
    with builtins.open(full, "rb") as f:  # this module's open() reads a layout
        return f.read()


def open(path: str) -> Checkpoint:  # every layout has detect(path) and open(path)
    if is_url(path) and paths.basename(path) == METADATA:
        folder = paths.dirname(path)  # no request to ask whether it is a folder
    else:
        folder = path if paths.isdir(path) else paths.dirname(path)
    union = Union(path, NAME, NAME)
    ckpt = union.ckpt
    try:
        meta = _read_metadata(union, folder)
    except OSError as err:
        raise CheckpointError(f"cannot read {METADATA}: {err}") from None
    _rank_metadata(union, folder)
    unread: list[str] = []
    entries, odd = _entries(meta, unread)
    for fqn in odd:
        ckpt.findings.append(Finding("info", "dcp-metadata", f"{fqn!r}: an entry of a kind "
                                     "this reader does not know: not shown", file=METADATA))
    if unread:  # the item such an entry names is not read: a bytes item DCP torch.loads?
        ckpt.findings.append(Finding(
            NEEDS_TRUST, "dcp-unread",
            f"{counted(len(unread), 'storage entry', 'storage entries')} of {METADATA} this "
            f"reader cannot read ({unread[0]}{', …' if len(unread) > 1 else ''}): the items "
            "they name were not scanned", file=METADATA))
    ckpt.metadata["dcp version"] = meta.get("version")
    ckpt.metadata["entries"] = len(entries)
    reader = Files(union, folder)
    with reader.reading(_items(entries)):
        for entry in entries:
            try:
                node = _tensor(reader, entry) if entry.kind == "tensor" else \
                    _bytes(reader, entry)
            except ServerError:
                raise  # the server's failure: every entry would fail alike
            except CheckpointError as err:
                node = _damaged(entry, str(err))
                if entry.kind == "bytes" and entry.where is None:  # never looked at
                    ckpt.findings.append(Finding(
                        NEEDS_TRUST, "dcp-unread", f"{entry.fqn!r}: {METADATA} says nowhere "
                        "where its bytes are, so they were not scanned (DCP torch.loads a "
                        "bytes entry with weights_only=False)", file=METADATA))
            union.put(entry.fqn, node, node.tensor.file if node.tensor and node.tensor.file
                      else _first_file(entry))
    reader.list_files()
    return ckpt


def _expected(entry: Entry, chunk: Chunk) -> int:
    """The bytes of a tensor chunk, from ``.metadata`` (bounds what it may inflate to)."""
    return math.prod(chunk.sizes) * (dtypes.itemsize(entry.dtype or "") or 8)


def _items(entries: list[Entry]) -> list[Item]:
    """Every item the entries name, as :meth:`Files.item` will be asked for it."""
    out: list[Item] = []
    for entry in entries:
        if entry.kind == "bytes" and entry.where is not None:
            out.append((entry.fqn, entry.where, None))
        elif entry.kind == "tensor":
            out.extend((entry.fqn, c.where, _expected(entry, c)) for c in entry.chunks
                       if c.where is not None)
    return out


def _first_file(entry: Entry) -> str:
    where = entry.where or next((c.where for c in entry.chunks if c.where), None)
    return where[0] if where else METADATA


def _damaged(entry: Entry, problem: str) -> Node:
    info = TensorInfo(entry.dtype or "unknown", entry.size, problem=problem,
                      file=_first_file(entry))
    if entry.kind == "bytes":
        return Node("truncated", entry.fqn, note=problem)
    return Node("tensor", entry.fqn, "torch.Tensor", tensor=info)


def _bytes(reader: Files, entry: Entry) -> Node:
    if entry.where is None:
        raise CheckpointError(f"{METADATA} says nowhere where it is")
    node = reader.item(entry.fqn, entry.where)
    for n in node.walk():
        if n.tensor is not None:
            n.tensor.file = entry.where[0]
    return node


def _tensor(reader: Files, entry: Entry) -> Node:
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
        node = reader.item(entry.fqn, chunk.where, _expected(entry, chunk))
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
