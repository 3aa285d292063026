"""The effective update of a LoRA pair, ``scale · B @ A``, as a tensor computed when read.

:func:`update_tensor` gives a :class:`TensorInfo` (float32; float64 when both halves are)
whose :class:`UpdateData` source computes the rows asked for from the two factors, read
once from the file by the usual readers and kept (they are small: ``r × (in + out)``).
Every operation that reads tensors then works on the update unchanged: statistics and
histograms a chunk at a time (never the whole matrix), heatmaps and values from the whole,
computed once (:func:`prepare`, a job, on a worker) and kept for the last few updates.

Shapes: a linear layer's update is ``[out, in]``; a convolution's (A ``[r, in, kh, kw]``,
B ``[out, r, 1, 1]``) is ``B.reshape(out, r) @ A.reshape(r, -1)`` shaped
``[out, in, kh, kw]``, as PEFT's ``get_delta_weight`` and kohya merge it; an embedding's
(PEFT's ``lora_embedding_A`` ``[r, num]``, ``lora_embedding_B`` ``[dim, r]``) and a
``fan_in_fan_out`` layer's are the transpose of ``B @ A``.
"""

from __future__ import annotations

import mmap
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.progress import CancelToken, Job, Progress
from ckpt_inspector.core.tensors import DataSource
from ckpt_inspector.core.tree import StorageInfo, TensorInfo

if TYPE_CHECKING:
    from ckpt_inspector.core.adapters.model import AdaptedModule

ROWS_ELEMENTS = 1 << 18  # elements of the update computed at a time
IN_MEMORY = 256 << 20  # a whole update above this goes to a temporary file's map
MAX_WHOLE = 8 << 30  # a whole update above this is refused (statistics still go in blocks)
_CACHE: OrderedDict[int, tuple[weakref.ref[Any], memoryview]] = OrderedDict()
_CACHE_SIZE = 3  # whole updates kept (the one shown, and the last few)
_CACHE_LOCK = threading.Lock()


def _values(info: TensorInfo, dtype: Any) -> np.ndarray:
    """All the values of a factor as a flat array of ``dtype`` (bfloat16, float16 and
    quantized tensors decoded as statistics decode them)."""
    from ckpt_inspector.core.ops.passes import element_chunks

    out = np.empty(info.numel, dtype=dtype)
    for values, index in element_chunks(info, chunk=1 << 20):
        out[index:index + len(values)] = values
    return out


class UpdateData(DataSource):
    """The elements of ``scale · B @ A`` (or its transpose) in C order, computed on demand:
    ``left @ right`` with ``left`` ``[rows, r]`` (the scale folded in) and ``right``
    ``[r, cols]``."""

    def __init__(self, module: AdaptedModule, rows: int, cols: int, dtype: str):
        self.module = module
        self.rows, self.cols = rows, cols
        self.dtype = dtype
        self.np_dtype = np.dtype(np.float64 if dtype == "float64" else np.float32)
        self.itemsize = self.np_dtype.itemsize
        self.nbytes = rows * cols * self.itemsize
        self._factors: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()

    # -- the two factors -----------------------------------------------------------------------
    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(left, right)``, read from the file on first use (thread-safe)."""
        with self._lock:
            if self._factors is None:
                m = self.module
                r = m.rank
                a = _values(m.a, self.np_dtype).reshape(r, -1)  # [r, in * kernel]
                b = _values(m.b, self.np_dtype).reshape(-1, r)  # [out, r]
                scale = self.np_dtype.type(m.scale)
                if m.transposed:  # (B @ A).T = A.T @ B.T
                    left, right = a.T * scale, b.T
                else:
                    left, right = b * scale, a
                self._factors = (np.ascontiguousarray(left), np.ascontiguousarray(right))
            return self._factors

    def rows_of(self, first: int, count: int) -> np.ndarray:
        """Rows ``[first, first + count)`` of the update, ``[count, cols]``."""
        left, right = self.factors()
        return left[first:first + count] @ right

    # -- bytes, as every DataSource gives them ---------------------------------------------
    def _pieces(self, offset: int, length: int | None,
                size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start byte, its bytes as uint8)`` covering ``[offset, offset + length)``, a
        few rows at a time (from the whole update when it is kept)."""
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        whole = self._kept()
        if whole is not None:
            raw = np.frombuffer(whole, dtype=np.uint8)
            for start in range(offset, end, size):
                yield start, raw[start:min(end, start + size)]
            return
        item, cols = self.itemsize, max(self.cols, 1)
        row_bytes = cols * item
        per = max(1, max(size, row_bytes) // row_bytes)
        pos = offset
        while pos < end:
            r0 = pos // row_bytes
            r1 = min(self.rows, r0 + per, -(-end // row_bytes))
            block = self.rows_of(r0, r1 - r0).reshape(-1).view(np.uint8)
            stop = min(end, r1 * row_bytes)
            yield pos, block[pos - r0 * row_bytes:stop - r0 * row_bytes]
            pos = stop

    def chunks(self, offset: int = 0, length: int | None = None,
               size: int = 16 << 20) -> Iterator[bytes]:
        for _at, piece in self._pieces(offset, length, min(size, ROWS_ELEMENTS * self.itemsize)):
            yield piece.tobytes()

    def blocks(self, offset: int = 0, length: int | None = None, size: int = 1 << 20,
               buffer: bytearray | None = None) -> Iterator[memoryview]:
        for _at, piece in self._pieces(offset, length, size):
            yield memoryview(np.ascontiguousarray(piece))

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        return b"".join(self.chunks(offset, length))

    # -- the whole update, kept for views that index it ------------------------------------
    def _kept(self) -> memoryview | None:
        with _CACHE_LOCK:
            cached = _CACHE.get(id(self))
            if cached is not None and cached[0]() is self:
                _CACHE.move_to_end(id(self))
                return cached[1]
        return None

    @property
    def ready(self) -> bool:
        """Whether the whole update is computed and kept (:meth:`buffer` returns at once)."""
        return self._kept() is not None

    def buffer(self) -> memoryview:
        """The whole update (computed now unless kept; :func:`prepare` computes it as a
        job with progress)."""
        kept = self._kept()
        if kept is not None:
            return kept
        for _ in self.fill():
            pass
        kept = self._kept()
        assert kept is not None
        return kept

    def fill(self, cancel: CancelToken | None = None) -> Job[None]:
        """Compute the whole update and keep it (above :data:`IN_MEMORY` in a deleted
        temporary file's map, which the system can page out); yields progress by rows."""
        if self.ready:
            return
        if self.nbytes > MAX_WHOLE:  # two small factors can describe an enormous matrix
            raise CheckpointError(
                f"the update is {self.rows:,} × {self.cols:,} elements "
                f"({self.nbytes / (1 << 30):,.1f} GiB): too large to hold whole; its "
                "statistics are computed a block at a time (stats --lora-update)")
        if self.nbytes > IN_MEMORY:
            with tempfile.TemporaryFile(prefix="ckpt-inspector-") as f:
                f.truncate(self.nbytes)
                out: Any = mmap.mmap(f.fileno(), self.nbytes)
        else:
            out = bytearray(self.nbytes)
        target = np.frombuffer(out, dtype=self.np_dtype).reshape(self.rows, self.cols)
        per = max(1, (ROWS_ELEMENTS * 4) // max(self.cols, 1))
        left, right = self.factors()
        for r0 in range(0, self.rows, per):
            if cancel is not None:
                cancel.check()
            r1 = min(self.rows, r0 + per)
            np.matmul(left[r0:r1], right, out=target[r0:r1])
            yield Progress("computing the update", r1 * self.cols, self.rows * self.cols,
                           self.module.name)
        del target
        view = memoryview(out).toreadonly()
        with _CACHE_LOCK:
            _CACHE[id(self)] = (weakref.ref(self), view)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)

    def __repr__(self) -> str:
        return f"UpdateData({self.module.name!r}, {self.rows}x{self.cols}, {self.dtype})"


def update_tensor(module: AdaptedModule) -> TensorInfo:
    """The effective update of ``module`` as a tensor (see the module's doc). Raises
    ValueError when the module has none (its ``problem``)."""
    if module.update_shape is None or module.problem:
        raise ValueError(module.problem or "this pair has no update")
    shape = tuple(module.update_shape)
    rows = shape[0]
    cols = 1
    for d in shape[1:]:
        cols *= d
    dtype = "float64" if module.a.dtype == module.b.dtype == "float64" else "float32"
    source = UpdateData(module, rows, cols, dtype)
    storage = StorageInfo(f"{module.name} (update)", dtype, rows * cols, "cpu", source)
    return TensorInfo(dtype, shape, storage=storage)


def is_update(info: TensorInfo | None) -> bool:
    """Whether ``info`` is an effective update (computed here, not read from a file)."""
    return info is not None and info.storage is not None and \
        isinstance(info.storage.source, UpdateData)


def prepare(info: TensorInfo, cancel: CancelToken | None = None) -> Job[TensorInfo]:
    """Compute the whole update ``info`` (a job for a worker) so that views can index it
    at once; returns ``info``."""
    source = info.storage.source if info.storage is not None else None
    if not isinstance(source, UpdateData):
        raise CheckpointError("not an effective update")
    yield from source.fill(cancel)
    return info


def stats_argv(info: TensorInfo, key: str) -> list[str]:
    """What names ``info`` to ``ckpt-inspector stats`` (a child computing statistics on
    another device): its key, or for an effective update its module and ``--lora-update``."""
    source = info.storage.source if info.storage is not None else None
    if isinstance(source, UpdateData):
        return [source.module.name, "--lora-update"]
    return [key]
