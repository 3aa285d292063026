"""One entry of a ``.pt2`` weights or constants config (``tensor_meta``: dtype, sizes,
strides, offset, device) as a tensor node over its record's raw bytes."""

from __future__ import annotations

from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.formats import _zip_members
from ckpt_inspector.core.pickle.rebuild import check_tensor
from ckpt_inspector.core.tree import Node, StorageInfo, TensorInfo

# torch._export.serde.schema.ScalarType -> torch dtype name
SCALAR_TYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16",
                7: "float32", 8: "float64", 9: "complex32", 10: "complex64", 11: "complex128",
                12: "bool", 13: "bfloat16", 28: "uint16", 29: "float8_e4m3fn",
                30: "float8_e5m2", 31: "float8_e4m3fnuz", 32: "float8_e5m2fnuz",
                33: "float8_e8m0fnu", 34: "uint32", 35: "uint64"}
# a graph of a large model is a few MB; json.loads costs ~6x the text in Python objects


def tensor_node(container: Any, record: Any, key: str, entry: dict[str, Any],
                 problem: str | None = None) -> Node:
    meta = entry.get("tensor_meta")
    if not isinstance(meta, dict):
        info = TensorInfo("unknown", (), None)
        info.problem = problem or "no tensor_meta: the entry is malformed"
        return Node("tensor", key, "torch.Tensor", tensor=info)
    raw_dtype = meta.get("dtype")
    dtype = SCALAR_TYPES.get(raw_dtype, f"pt2:{raw_dtype}") if isinstance(
        raw_dtype, int) else f"pt2:{raw_dtype!r}"

    def ints(values: Any) -> tuple[int, ...]:
        if values is None:
            return ()
        if not isinstance(values, list):
            raise ValueError("not a list")
        out = []
        for v in values:
            if not (isinstance(v, dict) and type(v.get("as_int")) is int):
                raise ValueError("symbolic size")
            out.append(v["as_int"])
        return tuple(out)

    info = TensorInfo(dtype, (), None)
    try:
        info.shape = ints(meta.get("sizes"))
        info.stride = ints(meta.get("strides"))
        offset_field = meta.get("storage_offset")
        offset = offset_field.get("as_int", 0) if isinstance(offset_field, dict) else 0
        if type(offset) is not int:
            raise ValueError("symbolic offset")
    except ValueError:
        info.problem = "symbolic or malformed sizes"
        return Node("tensor", key, "torch.Tensor", tensor=info)
    device = meta.get("device")
    device = device if isinstance(device, dict) else {}
    index = device.get("index")
    info.device = str(device.get("type", "cpu")) + (f":{index}" if index is not None else "")
    info.requires_grad = bool(meta.get("requires_grad"))
    info.is_parameter = bool(entry.get("is_param"))
    if problem or record is None:
        info.problem = problem or "weight record missing from the archive"
    else:
        itemsize = 1 if dtype.startswith("pt2:") else max(1, _itemsize(dtype))
        numel = record.file_size // itemsize
        info.storage = StorageInfo(str(entry.get("path_name")), dtype, numel, info.device,
                                   _zip_members.ZipEntryData(container, record))
        info.storage_offset = offset
        info.problem = check_tensor(info, offset, info.storage)
    node = Node("tensor", key, "torch.nn.Parameter" if info.is_parameter else "torch.Tensor",
                tensor=info)
    node.role = "parameter" if info.is_parameter else "buffer"
    return node


def _itemsize(dtype: str) -> int:
    return dtypes.itemsize(dtype) or 1
