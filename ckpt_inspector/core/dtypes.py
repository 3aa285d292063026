"""Every dtype the readers know, by torch's name (without ``torch.``).

One table serves all formats: the legacy typed-storage class names used in
torch's pickles, safetensors' dtype codes and ONNX's ``TensorProto.DataType``
numbers all map onto torch's names here. ``tests/core/test_dtypes.py`` checks
the table against the installed torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # torch name without "torch.", e.g. "bfloat16"
    itemsize: int  # bytes per element as torch stores them
    kind: str  # float | int | uint | bool | complex | quant | bits
    numpy: str | None = None  # numpy dtype string when numpy has the exact type


_TABLE = [
    DType("float64", 8, "float", "<f8"),
    DType("float32", 4, "float", "<f4"),
    DType("float16", 2, "float", "<f2"),
    DType("bfloat16", 2, "float"),
    DType("float8_e4m3fn", 1, "float"),
    DType("float8_e4m3fnuz", 1, "float"),
    DType("float8_e5m2", 1, "float"),
    DType("float8_e5m2fnuz", 1, "float"),
    DType("float8_e8m0fnu", 1, "float"),
    DType("float4_e2m1fn_x2", 1, "float"),
    DType("complex128", 16, "complex", "<c16"),
    DType("complex64", 8, "complex", "<c8"),
    DType("complex32", 4, "complex"),
    DType("bcomplex32", 4, "complex"),
    DType("int64", 8, "int", "<i8"),
    DType("int32", 4, "int", "<i4"),
    DType("int16", 2, "int", "<i2"),
    DType("int8", 1, "int", "<i1"),
    DType("uint64", 8, "uint", "<u8"),
    DType("uint32", 4, "uint", "<u4"),
    DType("uint16", 2, "uint", "<u2"),
    DType("uint8", 1, "uint", "<u1"),
    DType("bool", 1, "bool", "|b1"),
    DType("qint8", 1, "quant", "<i1"),
    DType("quint8", 1, "quant", "<u1"),
    DType("qint32", 4, "quant", "<i4"),
    DType("quint4x2", 1, "quant", "<u1"),
    DType("quint2x4", 1, "quant", "<u1"),
    *(DType(f"int{n}", 1, "int") for n in range(1, 8)),
    *(DType(f"uint{n}", 1, "uint") for n in range(1, 8)),
    DType("bits8", 1, "bits", "<u1"),
    DType("bits16", 2, "bits", "<u2"),
    DType("bits1x8", 1, "bits", "<u1"),
    DType("bits2x4", 1, "bits", "<u1"),
    DType("bits4x2", 1, "bits", "<u1"),
]

DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}

# Typed-storage classes as torch's pickles name them (``torch.FloatStorage``).
STORAGE_CLASSES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "QInt8Storage": "qint8",
    "QInt32Storage": "qint32",
    "QUInt8Storage": "quint8",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    # Bytes without a type: the tensor's dtype comes from _rebuild_tensor_v3.
    "UntypedStorage": "uint8",
}

# Integer values that quantized dtypes are stored as.
QUANT_STORAGE = {"qint8": "int8", "quint8": "uint8", "qint32": "int32",
                 "quint4x2": "uint8", "quint2x4": "uint8"}

SAFETENSORS_CODES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2": "float8_e5m2",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "C64": "complex64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
}

# onnx.TensorProto.DataType -> torch name. STRING (8) has no torch dtype.
ONNX_CODES: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
    17: "float8_e4m3fn",
    18: "float8_e4m3fnuz",
    19: "float8_e5m2",
    20: "float8_e5m2fnuz",
    21: "uint4",
    22: "int4",
    23: "float4_e2m1fn_x2",
    24: "float8_e8m0fnu",
}
ONNX_NAMES: dict[int, str] = {**ONNX_CODES, 8: "string"}

# ONNX packs these 4-bit types two to a byte.
ONNX_PACKED_4BIT = {21, 22, 23}


def itemsize(name: str) -> int | None:
    d = DTYPES.get(name)
    return d.itemsize if d else None


def storage_class_dtype(class_name: str) -> str | None:
    """dtype of a storage class name such as ``FloatStorage`` or ``cuda.HalfStorage``."""
    return STORAGE_CLASSES.get(class_name.rsplit(".", 1)[-1])
