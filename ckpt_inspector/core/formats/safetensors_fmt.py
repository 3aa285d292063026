"""safetensors: an 8-byte little-endian header length, a JSON header, then the data.

Only the header is read. It holds no code, so the verdict is always ``safe``
once the header is consistent.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.tensors import FileRange
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

MAX_HEADER = 100 << 20  # the limit the safetensors library itself enforces


def sniff(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack_from("<Q", head)
    return 2 <= n <= MAX_HEADER and head[8:9] == b"{"


def read(path: str) -> Checkpoint:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER:
            raise CheckpointError(f"safetensors header of {n:,} bytes is larger than allowed")
        if 8 + n > size:
            raise CheckpointError(
                f"safetensors header claims {n:,} bytes but the file has {size - 8:,}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"safetensors header is not valid JSON: {err}") from None
    if not isinstance(header, dict):
        raise CheckpointError("safetensors header is not a JSON object")
    data_start = 8 + n
    data_len = size - data_start
    root = Node("dict", None, "safetensors")
    ckpt = Checkpoint(path, "safetensors", root, file_size=size)
    metadata = header.pop("__metadata__", None)
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise CheckpointError("safetensors __metadata__ is not a JSON object")
        ckpt.metadata["__metadata__"] = metadata
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        info = _tensor(name, entry, path, data_start, data_len)
        root.add(Node("tensor", name, "torch.Tensor", tensor=info))
        if info.storage is not None and info.storage.numel:
            src = info.storage.source
            spans.append((src.offset - data_start, src.offset - data_start + src.nbytes, name))
    spans.sort()
    for (_b0, e0, n0), (b1, _e1, n1) in itertools.pairwise(spans):
        if b1 < e0:
            raise CheckpointError(f"safetensors tensors {n0!r} and {n1!r} overlap")
    ckpt.metadata["header bytes"] = n
    return ckpt


def _tensor(name: str, entry: Any, path: str, data_start: int, data_len: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CheckpointError(f"safetensors entry {name!r} is not an object")
    code = entry.get("dtype")
    shape = entry.get("shape")
    offsets = entry.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise CheckpointError(f"safetensors entry {name!r} has a malformed shape")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)):
        raise CheckpointError(f"safetensors entry {name!r} has malformed data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise CheckpointError(f"safetensors entry {name!r} lies outside the file")
    dtype = dtypes.SAFETENSORS_CODES.get(code)
    info = TensorInfo(dtype or f"safetensors:{code}", tuple(shape), None, 0, device="cpu")
    if dtype is None:
        info.problem = f"dtype {code!r} is not supported"
        return info
    item = dtypes.itemsize(dtype) or 1
    numel = math.prod(shape)
    if numel * item != end - begin:
        raise CheckpointError(
            f"safetensors entry {name!r}: {end - begin:,} bytes for {numel:,} {code} elements")
    info.storage = StorageInfo(name, dtype, numel, "cpu",
                               FileRange(path, data_start + begin, end - begin))
    return info
