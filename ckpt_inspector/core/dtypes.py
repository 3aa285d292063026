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
    # Types whose stored bytes are not one element each: ``(elements, bytes)`` per stored
    # block (two float4 per byte, four float6 in three bytes, ggml's quantized blocks).
    # Their data sources decode the blocks, and ``itemsize``/``numpy`` describe the
    # decoded elements (one ml_dtypes byte for sub-byte floats, float32 for ggml blocks).
    block: tuple[int, int] | None = None


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

# ggml's quantized types (llama.cpp, GGUF files) by their lower-case names: (elements,
# bytes) per block, as gguf.GGML_QUANT_SIZES gives them (tests/core/test_gguf.py checks).
# Their values are read dequantized to float32.
GGML_BLOCKS: dict[str, tuple[int, int]] = {
    "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24),
    "q8_0": (32, 34), "q8_1": (32, 40), "q2_k": (256, 84), "q3_k": (256, 110),
    "q4_k": (256, 144), "q5_k": (256, 176), "q6_k": (256, 210), "q8_k": (256, 292),
    "iq2_xxs": (256, 66), "iq2_xs": (256, 74), "iq3_xxs": (256, 98), "iq1_s": (256, 50),
    "iq4_nl": (32, 18), "iq3_s": (256, 110), "iq2_s": (256, 82), "iq4_xs": (256, 136),
    "iq1_m": (256, 56), "tq1_0": (256, 54), "tq2_0": (256, 66), "mxfp4": (32, 17),
    "nvfp4": (64, 36), "q1_0": (128, 18),
}

DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}  # torch's dtypes

# dtypes torch lacks that files hold: sub-byte floats by element (ml_dtypes' names; torch's
# float4_e2m1fn_x2 is a pair) and ggml's quantized blocks
OTHER_DTYPES: dict[str, DType] = {d.name: d for d in [
    DType("float4_e2m1fn", 1, "float", block=(2, 1)),
    DType("float6_e2m3fn", 1, "float", block=(4, 3)),
    DType("float6_e3m2fn", 1, "float", block=(4, 3)),
    *(DType(name, 4, "float", "<f4", block=b) for name, b in GGML_BLOCKS.items()),
]}
KNOWN: dict[str, DType] = {**DTYPES, **OTHER_DTYPES}


def get(name: str) -> DType | None:
    """The dtype of a tensor by its name, torch's or another (see :data:`OTHER_DTYPES`)."""
    return KNOWN.get(name)


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
    "F4": "float4_e2m1fn",  # two per byte, the first in the low nibble
    "F6_E2M3": "float6_e2m3fn",  # four in three bytes (see core/decoded.py)
    "F6_E3M2": "float6_e3m2fn",
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
    d = KNOWN.get(name)
    return d.itemsize if d else None


def stored_nbytes(name: str, numel: int) -> int:
    """Bytes ``numel`` elements of ``name`` take in a file (whole blocks for block types)."""
    d = KNOWN.get(name)
    if d is None:
        return numel
    if d.block is not None:
        elements, size = d.block
        return -(-numel // elements) * size
    return numel * d.itemsize


def storage_class_dtype(class_name: str) -> str | None:
    """dtype of a storage class name such as ``FloatStorage`` or ``cuda.HalfStorage``."""
    return STORAGE_CLASSES.get(class_name.rsplit(".", 1)[-1])
