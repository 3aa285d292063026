"""Tensors whose stored bytes are not one element each: sub-byte floats (safetensors ``F4``,
``F6_E2M3``, ``F6_E3M2``) and ggml's quantized blocks (GGUF ``q8_0``, ``q4_k``, ...).

Their :class:`DecodedData` source decodes the stored blocks on demand, a piece at a time:
operations read its bytes as the decoded elements (one ml_dtypes byte per sub-byte float,
float32 for ggml blocks, see ``dtypes.DType.block``) through the usual ``DataSource``
calls, so statistics, histograms, heatmaps and values work unchanged. A
:class:`PackedTensorInfo` reports the bytes the tensor takes in the file.

Bit order: ``F4`` packs two elements a byte, the first in the low nibble (torch's
``float4_e2m1fn_x2``, ONNX, NVIDIA).

float4 has two names for the same bytes. A file that stores elements (safetensors ``F4``,
ONNX ``FLOAT4E2M1``) is shown as it says: ``float4_e2m1fn`` (ml_dtypes' name) with the
header's shape, the model's logical one. torch has no 4-bit element: it holds a byte of
two, ``float4_e2m1fn_x2``, with the last dimension halved (``safetensors.torch.load_file``
of an ``F4`` tensor gives that); a torch file is shown as torch holds it.
:func:`torch_f4_view` and :func:`f4_elements` turn one into the other over the same bytes,
for exports to torch and for comparing the two. The safetensors library leaves the order of ``F6``
bits to its users; they are read the same way, as a little-endian bit stream (element
``i`` in bits ``6i .. 6i+5`` of each 3-byte group read as a little-endian integer).
"""

from __future__ import annotations

import mmap
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.tensors import DataSource
from ckpt_inspector.core.tree import StorageInfo, TensorInfo

PIECE_ELEMENTS = 1 << 18  # elements decoded at a time by chunks() and blocks()
IN_MEMORY = 256 << 20  # a whole decoded tensor above this goes to a temporary file's map
# the last few whole decodes: id of the source -> (the source, weakly; its elements)
_CACHE: OrderedDict[int, tuple[weakref.ref[Any], memoryview]] = OrderedDict()
_CACHE_SIZE = 2


@dataclass(eq=False, slots=True)
class PackedTensorInfo(TensorInfo):
    """A tensor of a block dtype: its ``nbytes`` are the bytes it takes in the file."""

    @property
    def nbytes(self) -> int:
        return dtypes.stored_nbytes(self.dtype, self.numel)


Decoder = Callable[[np.ndarray], np.ndarray]  # whole blocks of uint8 -> decoded elements


class DecodedData(DataSource):
    """The decoded elements of ``numel`` elements stored in blocks in ``raw``.

    ``block`` is ``(elements, bytes)`` per stored block, ``itemsize`` the bytes of one
    decoded element, ``decode`` turns whole blocks (a flat uint8 array) into a flat array
    of decoded elements. Offsets and lengths are in decoded bytes."""

    def __init__(self, raw: DataSource, numel: int, block: tuple[int, int], itemsize: int,
                 decode: Decoder):
        self.raw = raw
        self.numel = numel
        self.block = block
        self.itemsize = itemsize
        self.decode = decode
        self.nbytes = numel * itemsize

    @property
    def stored_nbytes(self) -> int:
        return self.raw.nbytes

    def _decoded(self, first: int, count: int) -> np.ndarray:
        """Elements ``[first, first+count)``, decoded from the whole blocks around them."""
        per, size = self.block
        b0, b1 = first // per, -(-(first + count) // per)
        raw = self.raw.read(b0 * size, (b1 - b0) * size)
        if len(raw) != (b1 - b0) * size:
            raise CheckpointError("the file ends inside a tensor's data")
        try:
            values = self.decode(np.frombuffer(raw, dtype=np.uint8))
        except (ValueError, NotImplementedError) as err:
            raise CheckpointError(f"cannot decode the tensor: {err}") from None
        skip = first - b0 * per
        return values.reshape(-1)[skip:skip + count]

    def _pieces(self, offset: int, length: int | None,
                size: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start byte, end byte, decoded elements covering them)`` for a byte range."""
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        item = self.itemsize
        per = self.block[0]
        step = max(per, (max(size, item) // item) // per * per)
        pos = offset
        while pos < end:
            e0 = pos // item
            e1 = min(self.numel, -(-min(end, pos + step * item) // item))
            values = self._decoded(e0, e1 - e0)
            raw = values.view(np.uint8)
            stop = min(end, pos + step * item, e1 * item)
            yield pos, stop, raw[pos - e0 * item:stop - e0 * item]
            pos = stop

    def chunks(self, offset: int = 0, length: int | None = None,
               size: int = 16 << 20) -> Iterator[bytes]:
        for _a, _b, piece in self._pieces(offset, length, min(size, PIECE_ELEMENTS * 4)):
            yield piece.tobytes()

    def blocks(self, offset: int = 0, length: int | None = None, size: int = 1 << 20,
               buffer: bytearray | None = None) -> Iterator[memoryview]:
        for _a, _b, piece in self._pieces(offset, length, size):
            yield memoryview(np.ascontiguousarray(piece))

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        return b"".join(self.chunks(offset, length))

    def buffer(self) -> memoryview:
        """All the decoded elements (kept for the last few tensors asked for; above
        :data:`IN_MEMORY` in a deleted temporary file's map, which the system can page out)."""
        cached = _CACHE.get(id(self))
        if cached is not None and cached[0]() is self:
            _CACHE.move_to_end(id(self))
            return cached[1]
        if self.nbytes > IN_MEMORY:  # a deleted temporary file: pages the system can drop
            with tempfile.TemporaryFile(prefix="ckpt-inspector-") as f:
                f.truncate(self.nbytes)
                out: Any = mmap.mmap(f.fileno(), self.nbytes)
        else:
            out = bytearray(self.nbytes)
        view = memoryview(out)
        for a, b, piece in self._pieces(0, None, 16 << 20):
            view[a:b] = piece.tobytes()
        view = view.toreadonly()
        _CACHE[id(self)] = (weakref.ref(self), view)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return view


# -- sub-byte floats ---------------------------------------------------------------------------
def unpack_bits(raw: np.ndarray, bits: int) -> np.ndarray:
    """Little-endian bit-stream unpacking of 4- or 6-bit codes, one code per byte."""
    if bits == 4:
        out = np.empty(len(raw) * 2, dtype=np.uint8)
        out[0::2] = raw & 0x0F
        out[1::2] = raw >> 4
        return out
    if bits == 6:
        groups = raw.reshape(-1, 3).astype(np.uint32)
        word = groups[:, 0] | (groups[:, 1] << 8) | (groups[:, 2] << 16)
        shifts = np.array([0, 6, 12, 18], dtype=np.uint32)
        return ((word[:, None] >> shifts) & 0x3F).astype(np.uint8).reshape(-1)
    raise ValueError(f"{bits}-bit codes are not supported")


SUB_BYTE_BITS = {"float4_e2m1fn": 4, "float6_e2m3fn": 6, "float6_e3m2fn": 6}


def sub_byte_source(raw: DataSource, dtype: str, numel: int) -> DecodedData:
    """The elements of a packed sub-byte float tensor, one ml_dtypes byte each."""
    bits = SUB_BYTE_BITS[dtype]
    d = dtypes.KNOWN[dtype]
    assert d.block is not None
    return DecodedData(raw, numel, d.block, 1, lambda b: unpack_bits(b, bits))


def ggml_source(raw: DataSource, dtype: str, numel: int, qtype: Any) -> DecodedData:
    """The elements of a ggml-quantized tensor, dequantized to float32 by the ``gguf``
    package (llama.cpp's own), a piece of whole blocks at a time."""
    from gguf import quants

    block = dtypes.GGML_BLOCKS[dtype]

    def decode(b: np.ndarray) -> np.ndarray:
        return np.asarray(quants.dequantize(b, qtype), dtype=np.float32)

    return DecodedData(raw, numel, block, 4, decode)


# -- float4: elements and torch's pairs ------------------------------------------------------
F4, F4_X2 = "float4_e2m1fn", "float4_e2m1fn_x2"


class _Slice(DataSource):
    """``length`` bytes of ``base`` from ``start``."""

    def __init__(self, base: DataSource, start: int, length: int):
        self.base, self.start, self.nbytes = base, start, length
        self.byteorder = base.byteorder

    def buffer(self) -> memoryview:
        return self.base.buffer()[self.start:self.start + self.nbytes]

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        return self.base.read(self.start + offset, max(0, end - offset))

    def file_span(self) -> tuple[str, int] | None:
        span = self.base.file_span()
        return None if span is None else (span[0], span[1] + self.start)


def torch_f4_view(info: TensorInfo) -> TensorInfo | None:
    """A ``float4_e2m1fn`` tensor (safetensors' ``F4``) as torch holds it:
    ``float4_e2m1fn_x2``, the last dimension halved, the same bytes. None where torch
    cannot hold it (a scalar, an odd last dimension) or it is not such a tensor."""
    source = info.storage.source if info.storage is not None else None
    if info.dtype != F4 or not info.shape or info.shape[-1] % 2 or \
            not isinstance(source, DecodedData):
        return None
    shape = (*info.shape[:-1], info.shape[-1] // 2)
    n = source.stored_nbytes
    assert info.storage is not None
    return TensorInfo(F4_X2, shape, None, 0,
                      StorageInfo(info.storage.key, F4_X2, n, info.storage.location,
                                  source.raw),
                      device=info.device, file=info.file, pieces=info.pieces)


def f4_elements(info: TensorInfo) -> TensorInfo | None:
    """A torch ``float4_e2m1fn_x2`` tensor as its elements: ``float4_e2m1fn``, the last
    dimension doubled (what ``safetensors.torch`` writes it as). None unless it is such a
    tensor, dense, in C order, with its data."""
    source = info.storage.source if info.storage is not None else None
    if info.dtype != F4_X2 or not info.shape or source is None or \
            info.layout != "strided" or not info.is_contiguous():
        return None
    assert info.storage is not None
    n = info.numel
    out = PackedTensorInfo(F4, (*info.shape[:-1], info.shape[-1] * 2), None, 0,
                           device=info.device, file=info.file, pieces=info.pieces)
    raw = _Slice(source, info.storage_offset, n)
    out.storage = StorageInfo(info.storage.key, "uint8", n, info.storage.location,
                              sub_byte_source(raw, F4, n * 2))
    return out
