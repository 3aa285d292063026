"""Passes over a tensor's data: its elements in chunks (:func:`element_chunks`, decoded to
numbers numpy can add) fed to accumulators, on one thread or, for a big contiguous tensor,
on several (:func:`accumulate`). Each pass is a job: it yields :class:`Progress` and stops
at a :class:`CancelToken` within a chunk."""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.progress import Cancelled, CancelToken, Job, Progress
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import TensorInfo

CHUNK_ELEMENTS = 1 << 16  # arithmetic in pieces that stay in the CPU cache
READ_BYTES = 1 << 20  # file reads into one reused buffer

def numpy_dtype(name: str) -> Any:
    """The numpy dtype whose elements match a torch dtype's bytes."""
    import ml_dtypes

    special = {"bfloat16": ml_dtypes.bfloat16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
               "float8_e5m2": ml_dtypes.float8_e5m2, "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
               "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
               "float8_e8m0fnu": ml_dtypes.float8_e8m0fnu,
               "float4_e2m1fn": ml_dtypes.float4_e2m1fn,
               "float6_e2m3fn": ml_dtypes.float6_e2m3fn,
               "float6_e3m2fn": ml_dtypes.float6_e3m2fn}
    if name in special:
        return np.dtype(special[name])
    if name == "complex32":
        return np.dtype("<f2")  # pairs of halves: re, im
    d = dtypes.get(name)
    if d is None or d.numpy is None:
        raise CheckpointError(f"statistics of {name} tensors are not supported")
    return np.dtype(d.numpy)


def element_chunks(info: TensorInfo, chunk: int | None = None, first: int = 0,
                   count: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """``(values, index of the first)`` in C order, at most ``chunk`` at a time, as numbers:
    floats for float, complex-magnitude and dequantized tensors, integers for int and bool.

    Each array is valid only until the next is asked for: contiguous tensors are read
    into one reused buffer (see :meth:`DataSource.blocks`) and narrow floats widened into
    another, so a pass allocates nothing per chunk and its pieces stay in the CPU cache.
    ``first`` and ``count`` choose a range of elements (contiguous tensors only)."""
    if info.storage is None or info.storage.source is None or info.problem:
        raise CheckpointError(info.problem or "this tensor has no data in the file")
    if info.layout != "strided":
        raise CheckpointError(f"{info.layout} tensors have no dense values to read")
    raw_dtype = numpy_dtype(info.dtype)
    if info.storage.source.byteorder == "big":
        raw_dtype = raw_dtype.newbyteorder(">")
    item = info.itemsize
    numel = info.numel
    if numel == 0:
        return
    chunk = chunk or CHUNK_ELEMENTS
    widen = _Widen(chunk)
    if first or count is not None:
        if not info.is_contiguous():
            raise ValueError("a range of elements needs a contiguous tensor")
        count = min(numel - first, numel if count is None else count)
    if info.is_contiguous():
        per_read = max(1, READ_BYTES // item // chunk) * chunk
        index = first
        n = numel if count is None else count
        for block in info.storage.source.blocks((info.storage_offset + first) * item, n * item,
                                                per_read * item):
            values = np.frombuffer(block, dtype=raw_dtype)
            for s in range(0, len(values), chunk):
                part = values[s:s + chunk]
                yield _as_numbers(info, part, index, widen), index
                index += len(part)
            del values, part  # the buffer is reused by the next read
        return
    view = to_numpy(info)  # a strided view of the memory-mapped storage: copy it by rows
    if view.ndim <= 1:
        flat = view.reshape(-1)
        for s in range(0, numel, chunk):
            part = np.ascontiguousarray(flat[s:s + chunk]).view(raw_dtype)
            yield _as_numbers(info, part, s, widen), s
        return
    rows = view.shape[0]
    row_size = numel // rows
    step = max(1, chunk // max(row_size, 1))
    for r in range(0, rows, step):
        part = np.ascontiguousarray(view[r:r + step]).reshape(-1).view(raw_dtype)
        yield _as_numbers(info, part, r * row_size, widen), r * row_size


class _Widen:
    """A reused float32 buffer that narrow floats (half, bfloat16, float8) widen into."""

    def __init__(self, size: int):
        self.size = size
        self.buf: np.ndarray | None = None

    def __call__(self, values: np.ndarray) -> np.ndarray:
        if len(values) > self.size:
            return values.astype(np.float32)
        if self.buf is None:
            self.buf = np.empty(self.size, dtype=np.float32)
        out = self.buf[:len(values)]
        np.copyto(out, values, casting="unsafe")
        return out


def _as_numbers(info: TensorInfo, values: np.ndarray, index: int,
                widen: _Widen | None = None) -> np.ndarray:
    if info.dtype == "complex32":
        pairs = values.astype(np.float64).reshape(-1, 2)
        return np.hypot(pairs[:, 0], pairs[:, 1])
    if values.dtype.kind == "c":  # magnitude, in float64 whatever the precision
        return np.abs(values.astype(np.complex128, copy=False))
    if info.quantization:
        q = info.quantization
        ints = values.astype(np.float64)
        if q["scheme"].startswith("per_tensor"):
            return (ints - q["zero_point"]) * q["scale"]
        scales = to_numpy(info.components["scales"]).astype(np.float64)
        zeros = to_numpy(info.components["zero_points"]).astype(np.float64)
        axis = q["axis"]
        inner = math.prod(info.shape[axis + 1:])
        channel = (np.arange(index, index + len(values)) // inner) % info.shape[axis]
        return (ints - zeros[channel]) * scales[channel]
    if values.dtype.kind in "iub":
        return values
    if values.dtype.kind != "f" or values.dtype.itemsize < 4 or not values.dtype.isnative:
        return widen(values) if widen is not None else values.astype(np.float32)
    return values


# -- statistics ---------------------------------------------------------------------------------
# Below these magnitudes a chunk's squared deviations cannot overflow its float type.
REPORT_EVERY = 1 << 22  # elements between progress reports (and chances to cancel)


# -- passes over the data, on one or more threads -----------------------------------------------
PARALLEL_MIN = 1 << 23  # elements; smaller tensors are done in the calling thread


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 4))


def _lower_priority() -> None:
    """Make the calling (pool) thread yield the CPU to the rest of the process: with as
    many workers as cores, the window's thread would otherwise wait for a time slice."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not allowed
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)


def _parts(info: TensorInfo, chunk: int) -> list[tuple[int, int]]:
    """Element ranges for the workers: one unless the tensor is big and contiguous."""
    numel = info.numel
    workers = _workers()
    if workers == 1 or numel < PARALLEL_MIN or not info.is_contiguous():
        return [(0, numel)]
    per = -(-numel // workers // chunk) * chunk
    return [(start, min(per, numel - start)) for start in range(0, numel, per)]


def accumulate(info: TensorInfo, make: Any, stage: str, chunk: int | None = None,
               cancel: CancelToken | None = None) -> Job[Any]:
    """Feed every chunk of the tensor to accumulators made by ``make()`` (``add(values,
    index)``, ``merge(other)``); returns the merged one. Big contiguous tensors are split
    among threads (numpy releases the GIL in its loops). Progress is yielded about every
    :data:`REPORT_EVERY` elements; closing the generator, or setting ``cancel``, stops the
    threads at their next chunk."""
    chunk = chunk or CHUNK_ELEMENTS
    numel = info.numel
    parts = _parts(info, chunk)
    if len(parts) == 1:
        acc = make()
        done = reported = 0
        for values, index in element_chunks(info, chunk):
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            acc.add(values, index)
            done += len(values)
            if done - reported >= REPORT_EVERY or done == numel:
                reported = done
                yield Progress(stage, done, numel, info.dtype)
        return acc
    halt = threading.Event()  # ours to set: the caller's ``cancel`` may serve another pass
    progress = [0] * len(parts)

    def work(i: int, first: int, count: int) -> Any:
        _lower_priority()
        acc = make()
        for values, index in element_chunks(info, chunk, first, count):
            if halt.is_set() or (cancel is not None and cancel.is_set()):
                return None
            acc.add(values, index)
            progress[i] += len(values)
        return acc

    pool = ThreadPoolExecutor(len(parts), thread_name_prefix="ckpt-stats")
    try:
        futures = [pool.submit(work, i, a, n) for i, (a, n) in enumerate(parts)]
        while True:
            finished, _ = wait(futures, timeout=0.05)
            if len(finished) == len(futures):
                break
            yield Progress(stage, sum(progress), numel, info.dtype)
        results = [f.result() for f in futures]  # a worker's exception is raised here
    finally:
        halt.set()
        pool.shutdown(wait=True)
    if any(r is None for r in results):
        raise Cancelled()
    acc = results[0]
    for other in results[1:]:
        acc.merge(other)
    yield Progress(stage, numel, numel, info.dtype)
    return acc
