"""GGUF (llama.cpp): a header of key/value metadata and tensor descriptions, then aligned
tensor data. Read with the ``gguf`` package, llama.cpp's own Python reader, bounded so that
a hostile header (a count or a length past the end of the file) is refused in time and
memory bounded by the file's size. It holds no code: the verdict is ``safe``.

Tensors keep their ggml type as dtype where torch has none (``q8_0``, ``q4_k``, ...; plain
``F32``/``F16``/``BF16``/``F64``/``I8``..``I64`` tensors get torch's names, so that they
compare with other formats) and their logical shape in row-major order: GGUF lists the
dimensions fastest first (``ne[0]`` is a row), shown reversed as numpy would. Quantized
tensors are dequantized a piece of whole blocks at a time when their values are read
(see :mod:`ckpt_inspector.core.decoded`). A split part (``-0000K-of-0000N.gguf``) reads as
itself; the folder of a split model reads as the whole model
(:mod:`ckpt_inspector.core.layouts.gguf_split`).
"""

from __future__ import annotations

import math
import struct
import sys
from collections import Counter
from typing import Any

from ckpt_inspector.core import dtypes, templates
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io.source import Source
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

NAME = "gguf"
MAGIC = b"GGUF"
MAX_DIMS = 4  # GGML_MAX_DIMS: llama.cpp refuses more
MAX_ITEMS = 8_000_000  # array elements in all; the reader builds an object for each
# gguf's reader makes Python objects for each key/value, tensor and item of an array of
# arrays (about 5 KB and 60 µs a tensor): a header of 500,000 tiny tensors took 30 s and
# 2.8 GB. Real models hold tens of key/values and at most a few thousand tensors.
MAX_KV = 65_536
MAX_TENSORS = 100_000
MAX_NESTED_ITEMS = 65_536  # items of arrays of arrays, in all (no model writes one)
SHOWN_ITEMS = 8  # first items of a long array shown in the metadata
_I64 = 1 << 63

# ggml types torch has, by torch's name
PLAIN = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
         "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}
# the least bytes of a key/value (key length, type, one byte) and of a tensor description
# (name length, dims count, type, offset)
_MIN_KV = 8 + 4 + 1
_MIN_TENSOR = 8 + 4 + 4 + 8


def sniff(head: bytes) -> bool:
    return head[:4] == MAGIC


def read(src: Source) -> Checkpoint:
    size = len(src)
    head = src.read(0, 24)
    if len(head) < 24:
        raise CheckpointError("GGUF header is truncated")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", head, 4)
    if version & 0xFFFF == 0:
        version, n_tensors, n_kv = struct.unpack_from(">IQQ", head, 4)
    if n_tensors * _MIN_TENSOR + n_kv * _MIN_KV > size - 24:
        raise CheckpointError(f"GGUF header claims {n_tensors:,} tensors and {n_kv:,} "
                              f"key/values: more than a file of {size:,} bytes can hold")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise CheckpointError(f"GGUF header claims {n_tensors:,} tensors and {n_kv:,} "
                              f"key/values: more than the {MAX_TENSORS:,} tensors and "
                              f"{MAX_KV:,} key/values ckpt-inspector reads")
    reader = _open(src.path) if src.path is not None else _open_remote(src, size)
    root = Node("dict", None, "gguf")
    ckpt = Checkpoint(src.name, NAME, root, file_size=size)
    ckpt.metadata.update(_metadata(reader))
    ckpt.findings.extend(_template_findings(reader))
    types: Counter[str] = Counter()
    for t in reader.tensors:
        info = _tensor(src, t, reader.byte_order == "S")
        types[t.tensor_type.name] += 1
        root.add(Node("tensor", t.name, "gguf.tensor", tensor=info))
    ckpt.metadata["GGUF tensor types"] = dict(types)
    ckpt.metadata["GGUF data offset"] = int(reader.data_offset)
    return ckpt


def _open(path: str) -> Any:
    from gguf import GGUFReader

    reader_class = _bounded(GGUFReader)
    try:
        return reader_class(path)
    except CheckpointError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, OverflowError) as err:
        raise CheckpointError(f"malformed GGUF header: {err}") from None
    except RecursionError:
        raise CheckpointError("malformed GGUF header: arrays nested too deeply") from None
    except MemoryError:
        raise CheckpointError("malformed GGUF header: too large to read") from None


REMOTE_HEAD = 4 << 20  # the first read of a remote GGUF's header, four times more each try
MAX_REMOTE_HEAD = 256 << 20  # a vocabulary of 100,000s of tokens takes a few MiB


def _open_remote(src: Source, size: int) -> Any:
    """The reader of a GGUF that is not on disk (at a URL), from its header alone.

    gguf's reader maps a file. Here it maps a sparse file of the remote file's size that
    holds only the first bytes fetched: the header is parsed front to back, so if the data
    offset it finds lies within those bytes, every byte it parsed was the file's own. If
    not (or if zeros past them broke the parse), a four times larger start is fetched and
    the header read again. Tensor data stays remote (``src.range``)."""
    import tempfile

    want = REMOTE_HEAD
    while True:
        n = min(want, size)
        head = src.read(0, n)
        with tempfile.NamedTemporaryFile(prefix="ckpt-inspector-", suffix=".gguf") as tmp:
            tmp.truncate(size)  # sparse: only the header's bytes take room
            tmp.write(head)
            tmp.flush()
            try:  # the reader keeps its map of the file once the name is gone
                reader = _open(tmp.name)
                if int(reader.data_offset) <= n:
                    return reader
            except CheckpointError:
                if n == size:
                    raise
        if n == size:
            raise CheckpointError("malformed GGUF header: its tensor data would start past "
                                  "the end of the file")
        if want >= MAX_REMOTE_HEAD:
            raise CheckpointError(f"GGUF header larger than {MAX_REMOTE_HEAD >> 20} MiB: "
                                  "download the file to read it")
        want *= 4


_BOUNDED: dict[type, type] = {}


def _bounded(base: type) -> type:
    """``GGUFReader`` that stops at the end of the file, at counts the bytes left cannot
    hold, and at :data:`MAX_ITEMS` array elements, before it loops or allocates."""
    import numpy as np  # here, not at import: info and scan of other formats never load it

    if base in _BOUNDED:
        return _BOUNDED[base]
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

    least = {int(t): np.dtype(n).itemsize for t, n in base.gguf_scalar_to_np.items()}
    least.update({int(GGUFValueType.STRING): 8, int(GGUFValueType.ARRAY): 12})

    class Bounded(base):  # type: ignore[misc, valid-type]
        items = 0
        nested = 0

        def _get(self, offset: int, dtype: Any, count: int = 1,
                 override_order: Any = None) -> Any:
            count = int(count)
            end = int(offset) + np.dtype(dtype).itemsize * count
            if offset < 0 or count < 0 or end > len(self.data):
                raise CheckpointError("GGUF file is truncated: its header runs past the end")
            return super()._get(offset, dtype, count, override_order)

        def _left(self, offs: int) -> int:
            return len(self.data) - int(offs)

        def _build_fields(self, offs: int, count: int) -> int:
            if int(count) * _MIN_KV > self._left(offs):
                raise CheckpointError(f"GGUF header claims {int(count):,} key/values: more "
                                      "than the file holds")
            return super()._build_fields(offs, count)

        def _build_tensor_info(self, offs: int, count: int) -> Any:
            if int(count) * _MIN_TENSOR > self._left(offs):
                raise CheckpointError(f"GGUF header claims {int(count):,} tensors: more than "
                                      "the file holds")
            return super()._build_tensor_info(offs, count)

        def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
            if int(raw_type) == GGUFValueType.ARRAY:
                itype, n = _check_array(self, orig_offs, least)
                if itype != GGUFValueType.ARRAY:  # arrays of arrays take gguf's own walk
                    return _array_parts(self, orig_offs, itype, n)
                self.nested += n
                if self.nested > MAX_NESTED_ITEMS:
                    raise CheckpointError(f"GGUF metadata holds arrays of more than "
                                          f"{MAX_NESTED_ITEMS:,} arrays: more than "
                                          "ckpt-inspector reads")
            return super()._get_field_parts(orig_offs, raw_type)

        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            for field in fields:
                _check_tensor(field, int(start_offs), len(self.data), self.alignment,
                              GGMLQuantizationType, GGML_QUANT_SIZES)
            super()._build_tensors(start_offs, fields)

    _BOUNDED[base] = Bounded
    return Bounded


def _check_array(reader: Any, offs: int, least: dict[int, int]) -> tuple[int, int]:
    """An array's item type and count, the count checked against the bytes left and
    :data:`MAX_ITEMS` in all."""
    import numpy as np
    itype = int(reader._get(offs, np.uint32)[0])
    n = int(reader._get(offs + 4, np.uint64)[0])
    if itype not in least:
        raise CheckpointError(f"GGUF array of unknown type {itype}")
    if n * least[itype] > reader._left(offs + 12):
        raise CheckpointError(f"GGUF array of {n:,} items runs past the end of the file")
    reader.items += n
    if reader.items > MAX_ITEMS:
        raise CheckpointError(f"GGUF metadata holds more than {MAX_ITEMS:,} array items: "
                              "more than ckpt-inspector reads")
    return itype, n


def _array_parts(reader: Any, offs: int, itype: int, n: int) -> Any:
    """``GGUFReader._get_field_parts`` for an array of numbers or strings, in the same
    shape but lighter: gguf's own walk makes two numpy views per item (a 262k-token
    vocabulary took 20 s and 900 MB). Numbers are one view of them all; strings are walked
    by their lengths and only the first :data:`SHOWN_ITEMS` kept as parts."""
    import numpy as np
    from gguf import GGUFValueType

    parts = [reader._get(offs, np.uint32), reader._get(offs + 4, np.uint64)]
    gtype = GGUFValueType(itype)
    types = [GGUFValueType.ARRAY, gtype] if n else [GGUFValueType.ARRAY]
    pos = offs + 12
    if gtype != GGUFValueType.STRING:
        parts.append(reader._get(pos, reader.gguf_scalar_to_np[gtype], n))
        return 12 + int(parts[-1].nbytes), parts, [2], types
    swapped = (reader.byte_order == "S") == (sys.byteorder == "little")
    length_at = struct.Struct(">Q" if swapped else "<Q").unpack_from
    data, size, idxs = reader.data, len(reader.data), []
    for i in range(n):
        if pos + 8 > size:
            raise CheckpointError("GGUF file is truncated: its header runs past the end")
        (length,) = length_at(data, pos)
        if i < SHOWN_ITEMS:
            parts += [reader._get(pos, np.uint64), reader._get(pos + 8, np.uint8, length)]
            idxs.append(len(parts) - 1)
        pos += 8 + length
    if pos > size:
        raise CheckpointError("GGUF file is truncated: its header runs past the end")
    return pos - offs, parts, idxs, types


def _check_tensor(field: Any, start: int, size: int, alignment: int, qtypes: Any,
                  sizes: Any) -> None:
    """A tensor description as llama.cpp checks it (gguf.cpp): at most 4 dimensions, an
    element count within int64, a known type, rows of whole blocks, data in the file."""
    name = field.name
    _len, _name, n_dims, dims, raw_type, offset = field.parts
    if int(n_dims[0]) > MAX_DIMS:
        raise CheckpointError(f"GGUF tensor {name!r} has {int(n_dims[0]):,} dimensions: "
                              f"more than ggml's {MAX_DIMS}")
    ne = [int(d) for d in dims]
    numel = 1
    for d in ne:
        numel *= d
        if d >= _I64 or numel >= _I64:
            raise CheckpointError(f"GGUF tensor {name!r}: its element count overflows int64")
    try:
        qtype = qtypes(int(raw_type[0]))
        block, type_size = sizes[qtype]
    except (ValueError, KeyError):
        raise CheckpointError(f"GGUF tensor {name!r} has unknown ggml type "
                              f"{int(raw_type[0])}") from None
    if ne and ne[0] % block:
        raise CheckpointError(f"GGUF tensor {name!r}: a row of {ne[0]:,} is not whole "
                              f"blocks of {block} {qtype.name} elements")
    begin = int(offset[0])
    if begin % alignment:
        raise CheckpointError(f"GGUF tensor {name!r}: data offset {begin:,} is not aligned "
                              f"to {alignment}")
    if start + begin + numel // block * type_size > size:
        raise CheckpointError(f"GGUF tensor {name!r}: its data runs past the end of the file")


def _tensor(src: Source, t: Any, swapped: bool) -> TensorInfo:
    ggml = t.tensor_type.name
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))
    numel = math.prod(shape)
    raw = src.range(int(t.data_offset), int(t.n_bytes), "big" if swapped else "little")
    plain = PLAIN.get(ggml)
    if plain is not None:
        return TensorInfo(plain, shape, None, 0, StorageInfo(t.name, plain, numel, "cpu", raw))
    from ckpt_inspector.core.decoded import PackedTensorInfo, ggml_source

    name = ggml.lower()
    info = PackedTensorInfo(name, shape, None, 0, device="cpu")
    if name not in dtypes.GGML_BLOCKS:
        info.problem = f"ggml type {ggml} is not supported"
        return info
    if swapped:
        info.problem = "a big-endian GGUF file: quantized blocks are not decoded"
        return info
    info.storage = StorageInfo(t.name, "uint8", int(t.n_bytes), "cpu",
                               ggml_source(raw, name, numel, t.tensor_type))
    return info


def _template_findings(reader: Any) -> list[Any]:
    """The Jinja a chat loader renders, checked from its bytes: as a C string up to a NUL
    (what llama.cpp hands out) and whole, each decoded as loaders decode it."""
    from gguf import GGUFValueType

    out: list[Any] = []
    for key, field in reader.fields.items():
        if not templates.is_template_key(key) or not field.types or \
                field.types[0] != GGUFValueType.STRING:
            continue
        raw = bytes(field.parts[field.data[0]])
        texts = dict.fromkeys(r.decode("utf-8", "replace") for r in (raw.split(b"\0")[0], raw))
        for text in texts:
            found = templates.template_findings(text, key)
            if found:
                out += found
                break
    return out


def _metadata(reader: Any) -> dict[str, Any]:
    """Key/values as values; long arrays (a tokenizer's tokens) as their length and first
    items."""
    from gguf import GGUFValueType

    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            if key == "GGUF.version":
                out["GGUF version"] = int(field.parts[0][0])
            continue
        if field.types and field.types[0] == GGUFValueType.ARRAY:
            out[key] = _array(field)
            continue
        try:
            value = field.contents()
        except (UnicodeDecodeError, ValueError):
            value = "<not UTF-8>"
        out[key] = value
    return out


def _array(field: Any) -> Any:
    """An array as its items, or its length, item type and first items if long."""
    from gguf import GGUFValueType

    n = int(field.parts[4][0])  # key length, key, type, item type, count, items...
    sub = field.types[1] if len(field.types) > 1 else None
    if sub == GGUFValueType.STRING:
        first: list[Any] = [bytes(field.parts[i]).decode("utf-8", "replace")
                            for i in field.data[:SHOWN_ITEMS]]
    elif sub == GGUFValueType.ARRAY:
        first = []
    else:
        first = field.parts[field.data[0]][:SHOWN_ITEMS].tolist() if n else []
    if n <= SHOWN_ITEMS and sub != GGUFValueType.ARRAY:
        return first
    kind = sub.name.lower() if sub is not None else "value"
    return {"length": n, "type": kind, "first": first}
