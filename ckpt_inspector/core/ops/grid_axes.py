"""How a heatmap's axes read: the layout of a conv weight's grid of kernels (as many output
channels a row as fit the view's shape) and what each axis is, with its ticks.

A kernel grid draws each output channel as a tile (its input channels' kh×kw kernels side
by side); tiles wrap, ``across`` a row. Pixel numbers mean nothing there, so the axes are
ticked in channels: down the side the first output channel of each row of tiles, across
the bottom the output channel's place in its row (``+0``, ``+1``, ...), or, with one tile a
row, the input channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Tick = tuple[float, str]  # a position in pixels of the picture, and its label
MAX_LABELS = 16  # labelled ticks along an axis; the others are marks only


@dataclass
class Axes:
    """What a heatmap's axes say: titles, and ticks as levels (labelled, then marks);
    None where the axis counts pixels (the tensor's own indices)."""

    left: str
    bottom: str
    left_ticks: list[list[Tick]] | None = None
    bottom_ticks: list[list[Tick]] | None = None
    left_values: bool = True  # numbers on the left axis (not for a strip)


def grid_across(out_c: int, tile_w: int, kh: int, max_side: int, aspect: float = 1.0) -> int:
    """How many output channels' tiles go across a row so that the picture's shape (width
    over height) is nearest ``aspect``, the view's, and no side passes ``max_side``."""
    most = max(1, min(out_c, max_side // (tile_w + 2) or 1))
    aspect = aspect if aspect > 0 and math.isfinite(aspect) else 1.0

    def misfit(across: int) -> float:
        rows = min(math.ceil(out_c / across), max(1, (max_side + 1) // (kh + 1)))
        width, height = across * (tile_w + 2) - 2, rows * (kh + 1) - 1
        return abs(math.log(width / height / aspect))

    return min(range(1, most + 1), key=lambda a: (misfit(a), a))


def nice_step(n: int, limit: int = MAX_LABELS) -> int:
    """The least of 1, 2, 5, 10, 20, 50, ... that leaves at most ``limit`` of ``n`` labelled."""
    magnitude = 1
    while True:
        for base in (1, 2, 5):
            step = base * magnitude
            if math.ceil(n / step) <= limit:
                return step
        magnitude *= 10


def _ticks(centres: list[float], labels: list[str]) -> list[list[Tick]]:
    step = nice_step(len(centres))
    major = [(c, t) for i, (c, t) in enumerate(zip(centres, labels)) if i % step == 0]
    minor = [(c, "") for i, c in enumerate(centres) if i % step] if step > 1 else []
    return [major, minor]


def kernel_grid_axes(out_c: int, in_c: int, shown: tuple[int, int], kh: int, kw: int,
                     layout: tuple[int, int, int, int]) -> Axes:
    """The axes of a kernel grid of ``shown`` (output, input) channels of an
    ``out_c``×``in_c``×``kh``×``kw`` weight laid out as ``layout`` (across, kh, kw, tile_w)."""
    n_out, n_in = shown
    across, _kh, _kw, tile_w = layout
    rows = math.ceil(n_out / across)
    row_centres = [r * (kh + 1) + kh / 2 for r in range(rows)]
    of_out = f" (first {n_out} of {out_c})" if n_out < out_c else ""
    of_in = f"{n_in} of {in_c}" if n_in < in_c else f"{in_c}"
    kernels = f"{kh}×{kw} kernels"
    if across == 1:
        left = f"output channel{of_out}"
        left_ticks = _ticks(row_centres, [str(r) for r in range(rows)])
        centres = [j * (kw + 1) + kw / 2 for j in range(n_in)]
        bottom = f"input channel ({of_in}, {kernels})"
        bottom_ticks = _ticks(centres, [str(j) for j in range(n_in)])
    else:
        left = f"output channel (row start){of_out}"  # short: a short plot cuts it
        left_ticks = _ticks(row_centres, [str(r * across) for r in range(rows)])
        centres = [t * (tile_w + 2) + tile_w / 2 for t in range(across)]
        bottom = (f"+ output channel in the row; each tile: input channels 0–{n_in - 1}"
                  f"{' of ' + str(in_c) if n_in < in_c else ''}, {kernels}")
        bottom_ticks = _ticks(centres, [f"+{t}" for t in range(across)])
    return Axes(left, bottom, left_ticks, bottom_ticks)


def matrix_axes(rows: str, cols: str, shape: tuple[int, int], strip: bool) -> Axes:
    """The axes of a plain picture of a slice: the tensor's indices, ticked by the plot."""
    if strip:
        return Axes("", f"index (0–{shape[1] - 1:,})", left_values=False)
    return Axes(f"{rows} (0–{shape[0] - 1:,})", f"{cols} (0–{shape[1] - 1:,})")
