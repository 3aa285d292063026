"""Opening a file for display: read it, scan it, build both trees people browse (grouped
and flat) and its totals. What the window does on a worker thread for every file it opens,
and what ``info`` can call for the same figures. Qt-free."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.display import DisplayNode, build_display_tree
from ckpt_inspector.core.formats import open_checkpoint
from ckpt_inspector.core.gcpause import bulk_allocation, release
from ckpt_inspector.core.scan import ScanReport, scan
from ckpt_inspector.core.summary import totals
from ckpt_inspector.core.tree import Checkpoint


@dataclass
class LoadedFile:
    path: str
    ckpt: Checkpoint
    report: ScanReport
    grouped: DisplayNode
    flat: DisplayNode
    totals: dict[str, Any]
    seconds: float


def load_file(path: str) -> LoadedFile:
    start = time.perf_counter()
    with bulk_allocation():
        ckpt = open_checkpoint(path)
        report = scan(ckpt)
        grouped = build_display_tree(ckpt.root, grouped=True)
        flat = build_display_tree(ckpt.root, grouped=False)
        file = LoadedFile(path, ckpt, report, grouped, flat, totals(ckpt), 0.0)
    file.seconds = time.perf_counter() - start
    return file


def release_file(file: LoadedFile) -> None:
    """Free a file's trees now (they are cyclic, and frozen out of the collector)."""
    for tree in (file.grouped, file.flat, file.ckpt.root):
        release(tree)
