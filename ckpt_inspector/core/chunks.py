"""Whole-list steps in C, a slice at a time.

A step such as ``set(map(f, xs))``, ``Counter(...)`` or ``sum(map(...))`` holds the
interpreter's lock for as long as it runs: over a million tensors up to a quarter of a
second, and the window's thread, which needs the lock for every event it handles, waits
that long for a worker to finish a sum. Run on slices of :data:`SLICE` items, each step
holds it a few milliseconds and other threads run in between.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

SLICE = 1 << 15


def in_slices(seq: list[Any], size: int | None = None) -> Iterator[list[Any]]:
    size = size or SLICE
    for i in range(0, len(seq), size):
        yield seq[i:i + size]
