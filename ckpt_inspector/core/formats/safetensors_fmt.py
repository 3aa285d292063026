"""safetensors: an 8-byte little-endian header length, a JSON header, then the data.

Only the header is read. It holds no code, so the verdict is always ``safe``
once the header is consistent.

The header is checked the way the safetensors library checks it
(``safetensors/src/tensor.rs``): at most ``MAX_HEADER_SIZE`` (100,000,000)
bytes of UTF-8 JSON, dimensions that fit an unsigned 64-bit integer and whose
running product does not overflow one, and data offsets that match the byte
size. It is also bounded where the library is not, so that a crafted header
cannot make reading slow or large: a number of tensors, dimensions per
tensor, and JSON values per tensor; each cap is refused with its reason.
"""

from __future__ import annotations

import itertools
import json
import struct
from typing import Any

import orjson

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io.source import Source
from ckpt_inspector.core.tree import (
    Checkpoint,
    LazyTensorNode,
    Node,
    StorageInfo,
    TensorInfo,
    tensors_when_read,
)

NAME = "safetensors"
MAX_HEADER = 100_000_000  # MAX_HEADER_SIZE of the safetensors library
# the library has no limit on these; ours keep a header within ~0.5 GB and a few seconds
MAX_TENSORS = 300_000
MAX_NDIM = 1024
MAX_VALUES = 16 * MAX_TENSORS + (1 << 16)  # JSON values (commas, arrays, objects)
_U64 = 1 << 64  # the library's usize: a size, or a running product, must stay below it


class _NotAnInt:
    """What a JSON float or NaN becomes: no field of a safetensors header may hold one."""

    __slots__ = ()


_FLOAT = _NotAnInt()


def sniff(head: bytes) -> bool:
    """A length below 4 GiB followed by ``{``; a header over the library's limit is
    recognised, so that reading refuses it with that reason."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack_from("<Q", head)
    return 2 <= n < 1 << 32 and head[8:9] == b"{"


def read(src: Source) -> Checkpoint:
    size = len(src)
    first = src.read(0, 8)
    if len(first) < 8:
        raise CheckpointError("safetensors header is truncated")
    (n,) = struct.unpack("<Q", first)
    if n > MAX_HEADER:
        raise CheckpointError(f"safetensors header of {n:,} bytes is larger than the "
                              f"{MAX_HEADER:,} the safetensors library accepts")
    if 8 + n > size:
        raise CheckpointError(
            f"safetensors header claims {n:,} bytes but the file has {size - 8:,}")
    raw = src.read(8, n)
    header = _parse(raw)
    del raw
    if not isinstance(header, dict):
        raise CheckpointError("safetensors header is not a JSON object")
    data_start = 8 + n
    data_len = size - data_start
    root = Node("dict", None, "safetensors")
    ckpt = Checkpoint(src.name, "safetensors", root, file_size=size)
    metadata = header.pop("__metadata__", None)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise CheckpointError("safetensors __metadata__ is not a JSON object")
        ckpt.metadata["__metadata__"] = metadata
    if len(header) > MAX_TENSORS:
        raise CheckpointError(f"safetensors header lists {len(header):,} tensors: more than "
                              f"the {MAX_TENSORS:,} ckpt-inspector reads")
    spans = _tensors(header, root, src, data_start, data_len)
    spans.sort()
    for (_b0, e0, n0), (b1, _e1, n1) in itertools.pairwise(spans):
        if b1 < e0:
            raise CheckpointError(f"safetensors tensors {n0!r} and {n1!r} overlap")
    ckpt.metadata["header bytes"] = n
    return ckpt


# dtype code -> (torch name, bytes per element) for the codes without blocks: the fast path
_PLAIN = {code: (name, dtypes.KNOWN[name].itemsize) for code, name in
          dtypes.SAFETENSORS_CODES.items() if dtypes.KNOWN[name].block is None}
_FAST_NDIM = 8


def _tensors(header: dict[str, Any], root: Node, src: Source, data_start: int,
             data_len: int) -> list[tuple[int, int, str]]:
    """Every entry of the header as a tensor node under ``root``; returns the data span of
    each non-empty one, ``(begin, end, name)``, relative to the data.

    An entry of the common kind (a plain dtype, at most 8 positive dimensions, offsets
    that fit and match) is checked and built inline: a shard holds thousands and a model
    hundreds of thousands. Any other entry goes through :func:`_tensor`, which checks it
    the library's way, so it is accepted or refused with the same words either way."""
    spans: list[tuple[int, int, str]] = []
    add_span = spans.append
    add_node = root.add
    kids = root.children
    add_child = kids.append
    ranges = src.ranges()  # what a tensor made when first read keeps (not the file's map)
    file_range = src.range
    plain = _PLAIN
    lazy = LazyTensorNode if tensors_when_read.get() else None
    for name, entry in header.items():
        if type(entry) is dict:
            code = entry.get("dtype")
            shape = entry.get("shape")
            offsets = entry.get("data_offsets")
            fast = plain.get(code) if type(code) is str else None
            if fast is not None and type(shape) is list and len(shape) <= _FAST_NDIM and \
                    type(offsets) is list and len(offsets) == 2:
                begin, end = offsets
                numel = 1
                for s in shape:
                    if type(s) is not int or s <= 0:
                        numel = -1
                        break
                    numel *= s
                if 0 < numel < _U64 and type(begin) is int and type(end) is int and \
                        0 <= begin <= end <= data_len and numel * fast[1] == end - begin:
                    if lazy is not None:  # a verdict reads no TensorInfo: made when read
                        node = lazy("tensor", name, "torch.Tensor", None, [
                            ranges, data_start + begin, end - begin, fast[0], shape, numel,
                            name, None])
                    else:
                        dtype = fast[0]
                        node = Node("tensor", name, "torch.Tensor", None, TensorInfo(
                            dtype, tuple(shape), None, 0, StorageInfo(
                                name, dtype, numel, "cpu",
                                file_range(data_start + begin, end - begin)), "cpu"))
                    # root.add inlined: the node knows its parent and row (set after:
                    # keyword arguments cost more than the two stores)
                    node.parent = root
                    node.row = len(kids)
                    add_child(node)
                    add_span((begin, end, name))
                    continue
        info = _tensor(name, entry, src, data_start, data_len)
        add_node(Node("tensor", name, "torch.Tensor", tensor=info))
        if info.storage is not None and info.storage.numel:
            data = info.storage.source
            data = getattr(data, "raw", data)  # the stored bytes of a decoded tensor
            add_span((data.offset - data_start, data.offset - data_start + data.nbytes, name))
    return spans


def _parse(raw: bytes) -> Any:
    """The header's JSON, parsed only once it is known to hold a bounded number of values
    (Python builds an object for every one of them)."""
    # every value but the first of a container follows a comma; counted on the bytes (a
    # comma inside a string counts too, which only matters for absurd metadata)
    values = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if values > MAX_VALUES:
        raise CheckpointError(f"safetensors header holds up to {values:,} JSON values: more "
                              f"than the {MAX_VALUES:,} ckpt-inspector reads (made for "
                              f"{MAX_TENSORS:,} tensors)")
    try:
        # orjson is strict JSON as serde_json (the library's parser) reads it: no NaN, no
        # integer past 64 bits, no lone surrogate; twice as fast as json for 100,000s of
        # entries. What it refuses goes through json for the refusal's words (a float or
        # a constant becomes a value no field accepts).
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError("safetensors header is not valid UTF-8") from None
    try:
        return json.loads(text, parse_float=lambda _s: _FLOAT,
                          parse_constant=lambda _s: _FLOAT)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"safetensors header is not valid JSON: {err}") from None
    except RecursionError:
        raise CheckpointError("safetensors header is not valid JSON: nested too deeply") \
            from None


def _size(value: Any) -> bool:
    """A usize as the library reads it: an integer in [0, 2**64)."""
    return type(value) is int and 0 <= value < _U64


def _tensor(name: str, entry: Any, src: Source, data_start: int, data_len: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CheckpointError(f"safetensors entry {name!r} is not an object")
    code = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not isinstance(shape, list):
        raise CheckpointError(f"safetensors entry {name!r} has a malformed shape")
    if len(shape) > MAX_NDIM:
        raise CheckpointError(f"safetensors entry {name!r} has {len(shape):,} dimensions: "
                              f"more than the {MAX_NDIM:,} ckpt-inspector reads")
    # the library's try_fold(1, checked_mul): every running product must fit in 64 bits,
    # checked before the next multiplication so no product ever grows large
    numel = 1
    for s in shape:
        if not _size(s):
            raise CheckpointError(f"safetensors entry {name!r} has a malformed shape")
        numel *= s
        if numel >= _U64:
            raise CheckpointError(f"safetensors entry {name!r}: its shape's element count "
                                  "overflows 64 bits")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_size, offsets))):
        raise CheckpointError(f"safetensors entry {name!r} has malformed data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise CheckpointError(f"safetensors entry {name!r} lies outside the file")
    dtype = dtypes.SAFETENSORS_CODES.get(code) if isinstance(code, str) else None
    info = TensorInfo(dtype or f"safetensors:{str(code)[:40]}", tuple(shape), None, 0,
                      device="cpu")
    if dtype is None:
        info.problem = f"dtype {str(code)[:40]!r} is not supported"
        return info
    block = dtypes.KNOWN[dtype].block
    if block is not None and numel % block[0]:  # the library's MisalignedSlice
        raise CheckpointError(f"safetensors entry {name!r}: {numel:,} {code} elements do not "
                              "end on a byte boundary")
    if dtypes.stored_nbytes(dtype, numel) != end - begin:
        raise CheckpointError(
            f"safetensors entry {name!r}: {end - begin:,} bytes for {numel:,} {code} elements")
    raw = src.range(data_start + begin, end - begin)
    if block is None:
        info.storage = StorageInfo(name, dtype, numel, "cpu", raw)
        return info
    # sub-byte floats (F4, F6_*): the storage is the file's bytes, read decoded
    from ckpt_inspector.core.decoded import PackedTensorInfo, sub_byte_source

    packed = PackedTensorInfo(dtype, info.shape, None, 0, device="cpu")
    packed.storage = StorageInfo(name, "uint8", end - begin, "cpu",
                                 sub_byte_source(raw, dtype, numel))
    return packed
