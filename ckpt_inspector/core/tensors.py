"""Lazy access to tensor data.

Readers attach a :class:`DataSource` to each storage; nothing is read until a
caller asks. :func:`storage_buffer` gives the storage's bytes as a zero-copy
``memoryview`` of a memory-mapped file where the bytes lie uncompressed in the
file (torch zip archives, legacy files, safetensors, ONNX raw data).
:func:`to_numpy` and :func:`to_torch` build views of one tensor on top of it;
only :func:`to_torch` imports torch.
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError

if TYPE_CHECKING:
    import numpy as np

    from ckpt_inspector.core.tree import TensorInfo


class DataSource:
    """The bytes of one storage. Subclasses say where they are (those made once per tensor
    by the hundred thousand keep their fields in slots)."""

    __slots__ = ()
    nbytes: int = 0
    byteorder: str = "little"

    @property
    def stored_nbytes(self) -> int:
        """Bytes the data takes in its file (less than :attr:`nbytes` where the source
        decodes packed or quantized elements, see ``core/decoded.py``)."""
        return self.nbytes

    def buffer(self) -> memoryview:
        """The bytes, zero-copy where the format allows."""
        raise NotImplementedError

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        return bytes(self.buffer()[offset:end])

    def file_span(self) -> tuple[str, int] | None:
        """(path, offset of byte 0) when the bytes lie uncompressed in a file, else None."""
        return None

    @property
    def remote(self) -> bool:
        """Whether the bytes are fetched from a server (then read in pieces, not whole)."""
        return False

    def chunks(self, offset: int = 0, length: int | None = None,
               size: int = 16 << 20) -> Iterator[bytes]:
        """The bytes ``[offset, offset+length)`` in pieces of at most ``size`` bytes.

        Read with ``pread`` where the bytes lie in a file, so a pass over a multi-GB
        storage keeps only one piece in memory (a memory map would keep every page it
        touched resident in this process)."""
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        span = self.file_span()
        if span is None:
            buf = self.buffer()
            for start in range(offset, end, size):
                yield bytes(buf[start:min(end, start + size)])
            return
        path, base = span
        fd = os.open(path, os.O_RDONLY)
        try:
            pos = offset
            while pos < end:
                piece = os.pread(fd, min(size, end - pos), base + pos)
                if not piece:
                    raise CheckpointError(f"{path}: the file ends inside a storage")
                yield piece
                pos += len(piece)
        finally:
            os.close(fd)

    def blocks(self, offset: int = 0, length: int | None = None, size: int = 1 << 20,
               buffer: bytearray | None = None) -> Iterator[memoryview]:
        """Like :meth:`chunks`, but each piece is a view of one reused buffer, valid
        only until the next is asked for: a pass over a storage allocates nothing per
        piece and keeps one small, cache-warm buffer resident. Passing ``buffer`` (at
        least ``size`` bytes) reuses it across storages too: a fresh one per storage
        costs a zero-fill and page faults, which dominate for many mid-sized tensors."""
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        span = self.file_span()
        if span is None and self.remote:  # fetched a piece at a time, never whole
            for piece in self.chunks(offset, end - offset, max(size, 8 << 20)):
                yield memoryview(piece)
            return
        if span is None:
            buf = self.buffer()
            for start in range(offset, end, size):
                yield buf[start:min(end, start + size)]
            return
        path, base = span
        if buffer is not None and len(buffer) >= size:
            view = memoryview(buffer)
        else:
            view = memoryview(bytearray(min(size, max(end - offset, 0))))
        fd = os.open(path, os.O_RDONLY)
        try:
            pos = offset
            while pos < end:
                want = min(size, end - pos)
                got = os.preadv(fd, [view[:want]], base + pos)
                if got <= 0:
                    raise CheckpointError(f"{path}: the file ends inside a storage")
                yield view[:got]
                pos += got
        finally:
            os.close(fd)


_MMAPS: dict[tuple[str, int, float], mmap.mmap] = {}


def mapped_file(path: str) -> mmap.mmap:
    """One read-only map per file version, shared by all its storages."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime)
    mm = _MMAPS.get(key)
    if mm is None:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        _MMAPS[key] = mm
    return mm


class FileRange(DataSource):
    """``length`` bytes at ``offset`` of a file on disk, memory-mapped on use."""

    __slots__ = ("byteorder", "nbytes", "offset", "path")

    def __init__(self, path: str, offset: int, length: int, byteorder: str = "little"):
        self.path = path
        self.offset = offset
        self.nbytes = length
        self.byteorder = byteorder

    def file_span(self) -> tuple[str, int] | None:
        return self.path, self.offset

    def buffer(self) -> memoryview:
        if self.nbytes == 0:
            return memoryview(b"")
        mm = mapped_file(self.path)
        if self.offset + self.nbytes > len(mm):
            raise CheckpointError(f"{self.path}: storage data runs past the end of the file")
        return memoryview(mm)[self.offset:self.offset + self.nbytes]

    def __repr__(self) -> str:
        return f"FileRange({self.path!r}, {self.offset}, {self.nbytes})"


class BytesRange(DataSource):
    """A range of an in-memory buffer (a checkpoint nested inside another)."""

    def __init__(self, data: bytes | Any, offset: int, length: int, byteorder: str = "little"):
        self.data = data
        self.offset = offset
        self.nbytes = length
        self.byteorder = byteorder

    def buffer(self) -> memoryview:
        return memoryview(self.data)[self.offset:self.offset + self.nbytes]


def extent(shape: tuple[int, ...], stride: tuple[int, ...] | None, offset: int) -> int:
    """Number of storage elements a view needs: ``offset + max index + 1`` (0 if empty)."""
    if 0 in shape:
        return 0
    if stride is None:
        n = 1
        for s in shape:
            n *= s
        return offset + n
    last = offset
    for size, st in zip(shape, stride):
        last += (size - 1) * st
    return last + 1


def storage_buffer(info: TensorInfo) -> memoryview:
    storage = info.storage
    if storage is None or storage.source is None:
        raise CheckpointError(info.problem or "this tensor has no data in the file")
    if info.problem:
        raise CheckpointError(info.problem)
    return storage.source.buffer()


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides = []
    acc = 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def to_numpy(info: TensorInfo) -> np.ndarray:
    """A read-only numpy view of the tensor's data, zero-copy from the file.

    dtypes numpy lacks (bfloat16, float8, complex32, ...) come back as their
    raw bits (``uint8``/``uint16``/``uint32``); :func:`to_torch` converts them.
    Quantized tensors come back as their integer representation.
    """
    import numpy as np

    d = dtypes.get(info.dtype)
    if d is None:
        raise CheckpointError(f"dtype {info.dtype} is not supported")
    np_code = d.numpy or {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}[d.itemsize]
    np_dtype = np.dtype(np_code)
    if info.storage and info.storage.source and info.storage.source.byteorder == "big":
        np_dtype = np_dtype.newbyteorder(">")
    buf = storage_buffer(info)
    flat = np.frombuffer(buf, dtype=np_dtype)
    stride = info.stride if info.stride is not None else _contiguous_strides(info.shape)
    if extent(info.shape, stride, info.storage_offset) > flat.size:
        raise CheckpointError("tensor extends past the end of its storage")
    if info.numel == 0:
        return np.zeros(info.shape, dtype=np_dtype)
    return np.lib.stride_tricks.as_strided(
        flat[info.storage_offset:],
        shape=info.shape,
        strides=tuple(s * np_dtype.itemsize for s in stride),
        writeable=False,
    )


def to_torch(info: TensorInfo, device: str = "cpu") -> Any:
    """The tensor as a ``torch.Tensor`` on ``device`` (a copy; never the file's pickle)."""
    import numpy as np
    import torch

    d = dtypes.get(info.dtype)
    if d is not None and d.block is not None:  # no such torch dtype: the values, as float32
        arr = to_numpy(info)
        if d.numpy is None:  # sub-byte float codes, one a byte
            import ml_dtypes

            arr = arr.view(getattr(ml_dtypes, info.dtype))
        return torch.from_numpy(np.array(arr, dtype=np.float32, order="C")).to(device)
    dtype = getattr(torch, info.dtype)
    q = info.quantization
    base_dtype = getattr(torch, dtypes.QUANT_STORAGE[info.dtype]) if q else dtype
    arr = to_numpy(info)
    if arr.dtype.byteorder == ">":
        arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
    host = torch.from_numpy(np.array(arr, copy=True, order="C"))
    if host.dtype != base_dtype:
        host = host.view(base_dtype)
    if q:
        with warnings.catch_warnings():  # quantized dtypes are deprecated; files still hold them
            warnings.simplefilter("ignore")
            if q["scheme"] in ("per_tensor_affine", "per_tensor_symmetric"):
                host = torch._make_per_tensor_quantized_tensor(host, q["scale"], q["zero_point"])
            else:
                scales = to_torch(info.components["scales"])
                zero_points = to_torch(info.components["zero_points"])
                host = torch._make_per_channel_quantized_tensor(host, scales, zero_points,
                                                                q["axis"])
    if info.is_parameter:
        grad = info.requires_grad and host.is_floating_point()
        host = torch.nn.Parameter(host, requires_grad=grad)
    return host.to(device)
