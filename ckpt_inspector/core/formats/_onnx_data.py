"""Where an ONNX initializer's numbers are: ``int32_data``/``int64_data``/``uint64_data``
are packed varints in the model, re-encoded as little-endian integers when read."""

from __future__ import annotations

from ckpt_inspector.core.formats._protobuf import decode_packed_varints
from ckpt_inspector.core.tensors import DataSource, mapped_file


class VarintData(DataSource):
    """ONNX ``int32_data``/``int64_data``/``uint64_data``: varints re-encoded on demand."""

    def __init__(self, path: str, offset: int, length: int, itemsize: int, signed: bool):
        self.path = path
        self.offset = offset
        self.length = length
        self.itemsize = itemsize
        self.signed = signed
        self.nbytes = 0  # known once decoded

    def buffer(self) -> memoryview:
        raw = bytes(mapped_file(self.path)[self.offset:self.offset + self.length])
        values = decode_packed_varints(raw)
        bits = self.itemsize * 8
        out = bytearray()
        for v in values:
            if self.signed and v >= 1 << 63:
                v -= 1 << 64
            out += (v & ((1 << bits) - 1)).to_bytes(self.itemsize, "little")
        self.nbytes = len(out)
        return memoryview(bytes(out))
