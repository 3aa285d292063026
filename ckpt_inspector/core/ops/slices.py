"""Two-dimensional windows on a tensor: the values table, the heatmap and ``.npy`` export.

A :class:`TensorSlice` shows two axes of a tensor with the others fixed at an
index. It is a numpy view of the memory-mapped file, so a table of millions of
rows reads only the cells on screen. Values are numbers as people mean them:
bfloat16 and float8 through ``ml_dtypes``, quantized tensors dequantized with
their scale and zero point (per channel where they have one).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io.atomic import atomic_file, check_target
from ckpt_inspector.core.ops.grid_axes import Axes, grid_across, kernel_grid_axes, matrix_axes
from ckpt_inspector.core.ops.stats import numpy_dtype
from ckpt_inspector.core.progress import Job, Progress
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import TensorInfo

MAX_SIDE = 1024  # heatmap pixels along a side before blocks are averaged
BAND_ELEMENTS = 1 << 22  # elements converted at a time while averaging blocks


def values_view(info: TensorInfo) -> np.ndarray:
    """The tensor as a numpy array of numbers, zero-copy from the file where numpy has the
    type (bfloat16 and float8 as ``ml_dtypes``; quantized as their integer representation;
    complex32, which numpy lacks, as a complex64 copy)."""
    if info.storage is None or info.storage.source is None or info.problem:
        raise CheckpointError(info.problem or "this tensor has no data in the file")
    if info.layout != "strided":
        raise CheckpointError(f"{info.layout} tensors have no dense values to show")
    arr = to_numpy(info)
    if info.dtype == "complex32":
        raw = np.asarray(arr, dtype=np.uint32)
        re = (raw & 0xFFFF).astype(np.uint16).view(np.float16)
        im = (raw >> 16).astype(np.uint16).view(np.float16)
        return re.astype(np.complex64) + 1j * im.astype(np.complex64)
    want = numpy_dtype(info.dtype)
    if arr.dtype.kind == "u" and want.kind != "u" and arr.dtype.itemsize == want.itemsize:
        arr = arr.view(want.newbyteorder(arr.dtype.byteorder))
    return arr


class TensorSlice:
    """Axes ``rows`` and ``cols`` of a tensor, the other axes fixed at ``index``.

    A 1-D tensor is one column, a 0-d tensor one cell."""

    def __init__(self, info: TensorInfo, axes: tuple[int, int] = (0, 1),
                 index: dict[int, int] | None = None):
        self.info = info
        arr = values_view(info)
        index = dict(index or {})
        if arr.ndim == 0:
            self.array = arr.reshape(1, 1)
            self.dims: tuple[int | None, int | None] = (None, None)
        elif arr.ndim == 1:
            self.array = arr.reshape(-1, 1)
            self.dims = (0, None)
        else:
            a, b = axes
            if a == b or not (0 <= a < arr.ndim and 0 <= b < arr.ndim):
                raise ValueError(f"axes {axes} do not name two dimensions of {arr.ndim}")
            sel: list[Any] = []
            for d in range(arr.ndim):
                if d in (a, b):
                    sel.append(slice(None))
                else:
                    i = int(index.get(d, 0))
                    if not 0 <= i < arr.shape[d]:
                        raise IndexError(f"index {i} is outside dim {d} of size {arr.shape[d]}")
                    sel.append(i)
            plane = arr[tuple(sel)]
            self.array = plane.T if a > b else plane
            self.dims = (a, b)
        self.index = index
        self._scale, self._zero = self._quantization()

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape  # type: ignore[return-value]

    def _quantization(self) -> tuple[Any, Any]:
        """Scale and zero point broadcastable over the 2-D array (None if not quantized)."""
        q = self.info.quantization
        if not q:
            return None, None
        if q["scheme"].startswith("per_tensor"):
            return float(q["scale"]), float(q["zero_point"])
        scales = to_numpy(self.info.components["scales"]).astype(np.float64)
        zeros = to_numpy(self.info.components["zero_points"]).astype(np.float64)
        axis = q["axis"]
        if axis == self.dims[0]:
            return scales.reshape(-1, 1), zeros.reshape(-1, 1)
        if axis == self.dims[1]:
            return scales.reshape(1, -1), zeros.reshape(1, -1)
        i = self.index.get(axis, 0)
        return float(scales[i]), float(zeros[i])

    def block(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Rows ``r0:r1`` and columns ``c0:c1`` as numbers (dequantized; complex stays)."""
        part = self.array[r0:r1, c0:c1]
        if self._scale is None:
            return np.asarray(part)
        scale, zero = self._scale, self._zero
        if isinstance(scale, np.ndarray):
            scale = scale[r0:r1] if scale.shape[0] > 1 else scale[:, c0:c1]
            zero = zero[r0:r1] if zero.shape[0] > 1 else zero[:, c0:c1]
        return (part.astype(np.float64) - zero) * scale

    def floats(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """The block as float32 for pictures: complex as its magnitude."""
        b = self.block(r0, r1, c0, c1)
        if b.dtype.kind == "c":
            return np.abs(b).astype(np.float32)
        return b.astype(np.float32)

    def value(self, r: int, c: int) -> Any:
        """One element as a Python number."""
        v = self.block(r, r + 1, c, c + 1)[0, 0]
        if v.dtype.kind == "b":
            return bool(v)
        if v.dtype.kind in "iu":
            return int(v)
        if v.dtype.kind == "c":
            return complex(v)
        return float(v)

    def raw(self, r: int, c: int) -> Any:
        """The stored element (a quantized tensor's integer)."""
        v = self.array[r, c]
        return int(v) if v.dtype.kind in "iu" else v.item()


def format_cell(v: Any) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, complex):
        return f"{v.real:.6g}{v.imag:+.6g}j"
    if math.isnan(v):
        return "nan"
    return f"{v:.6g}"


# -- heatmap --------------------------------------------------------------------------------------
@dataclass
class Heatmap:
    image: np.ndarray  # 2-D float32, rows down; NaN in grid gaps
    factor: tuple[int, int]  # each pixel is the mean of this many rows and columns
    rows: str  # what the rows and columns are, for axis labels
    cols: str
    grid: tuple[int, int] | None = None  # (out channels, in channels) shown, conv weights
    shown: tuple[int, int] | None = None  # rows and columns of the tensor the picture covers
    layout: tuple[int, int, int, int] | None = None  # kernel grid: tiles across, kh, kw, tile_w
    reduce: str = "none"  # how a pixel sums up its block: none (1×1), mean, absmax
    frame: Axes | None = None  # what the axes say: titles and, for a kernel grid, ticks

    def kernel_at(self, row: int, col: int) -> tuple[int, int, int, int] | None:
        """In a kernel grid, the weight ``[out, in, r, c]`` at pixel (row, col); None in a gap."""
        if self.layout is None or self.grid is None:
            return None
        across, kh, kw, tile_w = self.layout
        tile_row, r = divmod(row, kh + 1)
        tile_col, x = divmod(col, tile_w + 2)
        if r >= kh or x >= tile_w or row < 0 or col < 0 or tile_col >= across:
            return None
        j, c = divmod(x, kw + 1)
        out = tile_row * across + tile_col
        if c >= kw or out >= self.grid[0] or j >= self.grid[1]:
            return None
        return out, j, r, c


def heatmap(info: TensorInfo, axes: tuple[int, int] = (0, 1),
            index: dict[int, int] | None = None, kernels: bool = False,
            max_side: int = MAX_SIDE, reduce: str = "mean",
            aspect: float = 1.0) -> Job[Heatmap]:
    """A picture of the tensor (returns :class:`Heatmap`): the chosen two axes, the others
    fixed at ``index``; a 1-D tensor as a strip; conv weights [out, in, kh, kw] as a grid
    of kernels, laid out to fit a view ``aspect`` times as wide as it is high. Beyond
    ``max_side`` pixels, each pixel stands for a block of values, their ``mean`` or
    (``reduce="absmax"``) their largest magnitude, which keeps outliers visible; the factor
    is stated."""
    if kernels and len(info.shape) == 4:
        return (yield from _kernel_grid(info, max_side, aspect))
    sl = TensorSlice(info, axes, index)
    strip = sl.dims[1] is None  # 1-D (or 0-d): show as one row
    rows_n, cols_n = sl.shape
    if strip:
        rows_n, cols_n = cols_n, rows_n
    rows = "" if strip else f"dim {sl.dims[0]}"
    cols = "index" if strip else f"dim {sl.dims[1]}"

    def get(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        return sl.floats(c0, c1, r0, r1).T if strip else sl.floats(r0, r1, c0, c1)

    fr = max(1, math.ceil(rows_n / max_side))
    fc = max(1, math.ceil(cols_n / max_side))
    h, w = math.ceil(rows_n / fr), math.ceil(cols_n / fc)
    out = np.empty((h, w), dtype=np.float32)
    band_cols = max(fc, (BAND_ELEMENTS // fr) // fc * fc)
    done = 0
    for i in range(h):  # block means, a band of fr rows and some columns at a time
        r0, r1 = i * fr, min(rows_n, (i + 1) * fr)
        for c0 in range(0, cols_n, band_cols):
            c1 = min(cols_n, c0 + band_cols)
            block = get(r0, r1, c0, c1)
            out[i, c0 // fc:math.ceil(c1 / fc)] = (
                _block_absmax(block, fc) if reduce == "absmax" and (fr, fc) != (1, 1)
                else _block_means(block, fc))
            done += (r1 - r0) * (c1 - c0)
        if done >= BAND_ELEMENTS or i == h - 1:
            yield Progress("heatmap", (i + 1) * fr, rows_n)
            done = 0
    hm = Heatmap(out, (fr, fc), rows, cols, None, (rows_n, cols_n))
    hm.reduce = reduce if (fr, fc) != (1, 1) else "none"
    hm.frame = matrix_axes(rows, cols, (rows_n, cols_n), strip)
    return hm


def _block_absmax(band: np.ndarray, fc: int) -> np.ndarray:
    """Largest magnitude over all rows of ``band`` and groups of ``fc`` columns; NaN wins."""
    mags = np.abs(band).max(axis=0)  # NaN propagates, as a NaN in the block should show
    full = len(mags) // fc * fc
    out = mags[:full].reshape(-1, fc).max(axis=1)
    if full < len(mags):
        out = np.append(out, mags[full:].max())
    return out.astype(np.float32)


def _block_means(band: np.ndarray, fc: int) -> np.ndarray:
    """Means over all rows of ``band`` and groups of ``fc`` columns (the last may be short);
    a group with a NaN or inf shows it."""
    rows, cols = band.shape
    sums = band.sum(axis=0, dtype=np.float64)
    if fc == 1:
        return (sums / rows).astype(np.float32)
    full = cols // fc * fc
    out = sums[:full].reshape(-1, fc).sum(axis=1) / (rows * fc)
    if full < cols:
        out = np.append(out, sums[full:].sum() / (rows * (cols - full)))
    return out.astype(np.float32)


def _kernel_grid(info: TensorInfo, max_side: int, aspect: float = 1.0) -> Job[Heatmap]:
    """Conv weights as tiles, one per output channel, each a row of its ``in`` kernels;
    the tiles wrap so the picture has the view's shape (``aspect``, width over height).
    Gaps between kernels are NaN."""
    arr = values_view(info)
    out_c, in_c, kh, kw = arr.shape
    n_in = max(1, min(in_c, (max_side + 1) // (kw + 1)))
    tile_w = n_in * (kw + 1) - 1
    across = grid_across(out_c, tile_w, kh, max_side, aspect)
    n_out = min(out_c, across * max(1, (max_side + 1) // (kh + 1)))
    down = math.ceil(n_out / across)
    img = np.full((down * (kh + 1) - 1, across * (tile_w + 2) - 2), np.nan, dtype=np.float32)
    for o in range(n_out):
        block = dequantize(info, arr[o:o + 1, :n_in], (o, 0, 0, 0))[0]
        block = np.abs(block) if block.dtype.kind == "c" else block
        top, left = (o // across) * (kh + 1), (o % across) * (tile_w + 2)
        for j in range(n_in):
            x = left + j * (kw + 1)
            img[top:top + kh, x:x + kw] = block[j]
        if o % 64 == 63:
            yield Progress("heatmap", o + 1, n_out)
    rows = f"{n_out} of {out_c} out channels" if n_out < out_c else f"{out_c} out channels"
    cols = f"{n_in} of {in_c} in channels each" if n_in < in_c else f"{in_c} in channels each"
    layout = (across, kh, kw, tile_w)
    return Heatmap(img, (1, 1), rows, cols, (n_out, n_in), (n_out, n_in), layout=layout,
                   frame=kernel_grid_axes(out_c, in_c, (n_out, n_in), kh, kw, layout))


def dequantize(info: TensorInfo, part: np.ndarray, start: tuple[int, ...]) -> np.ndarray:
    """``part`` (the block of ``values_view(info)`` starting at ``start``, all dims kept) as
    numbers: a quantized tensor's integers dequantized in float64, anything else as is."""
    q = info.quantization
    if not q:
        return np.asarray(part)
    ints = np.asarray(part, dtype=np.float64)
    if q["scheme"].startswith("per_tensor"):
        return (ints - q["zero_point"]) * q["scale"]
    axis = q["axis"]
    lo = start[axis]
    scales = to_numpy(info.components["scales"]).astype(np.float64)[lo:lo + ints.shape[axis]]
    zeros = to_numpy(info.components["zero_points"]).astype(np.float64)[lo:lo + ints.shape[axis]]
    shape = [1] * ints.ndim
    shape[axis] = -1
    return (ints - zeros.reshape(shape)) * scales.reshape(shape)


# -- .npy export ------------------------------------------------------------------------------
def npy_dtype(info: TensorInfo) -> np.dtype:
    """What a tensor is saved as in ``.npy``: its own type where numpy has it, float32 for
    bfloat16, float8, sub-byte floats and dequantized tensors, complex64 for complex32."""
    d = dtypes.get(info.dtype)
    if info.quantization or info.dtype == "bfloat16" or info.dtype.startswith("float8") \
            or (d is not None and d.block is not None):
        return np.dtype("<f4")
    if info.dtype == "complex32":
        return np.dtype("<c8")
    return numpy_dtype(info.dtype).newbyteorder("<")


def save_npy(info: TensorInfo, out_path: str, source_path: str = "",
             overwrite: bool = False) -> Job[dict[str, Any]]:
    """Write the tensor as ``.npy`` (C order), atomically, in pieces of rows; returns
    ``{"path", "bytes", "dtype"}``. The source file is never written."""
    check_target(out_path, source_path or out_path + ".src", overwrite)
    out_dtype = npy_dtype(info)
    arr = values_view(info)
    with atomic_file(out_path) as tmp, open(tmp, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(out_dtype), "fortran_order": False,
                  "shape": tuple(info.shape)}
        np.lib.format.write_array_header_2_0(f, header)
        if arr.ndim == 0 or arr.size == 0:
            np.asarray(dequantize(info, arr, (0,) * arr.ndim), dtype=out_dtype).tofile(f)
        else:
            rows = arr.shape[0]
            per_row = max(1, arr.size // rows)
            step = max(1, BAND_ELEMENTS // per_row)
            for r in range(0, rows, step):
                part = dequantize(info, arr[r:r + step], (r,) + (0,) * (arr.ndim - 1))
                f.write(np.ascontiguousarray(part, dtype=out_dtype).tobytes())
                yield Progress("saving", min(rows, r + step), rows)
    return {"path": os.path.abspath(out_path), "bytes": os.path.getsize(out_path),
            "dtype": str(out_dtype)}
