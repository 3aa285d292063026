"""Opening a file: :func:`open_file` reads it (what every command calls), :func:`load_file`
also scans it and builds both trees people browse (grouped and flat) and its totals (what
the window does on a worker thread for every file it opens). Qt-free."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.display import DisplayNode, build_display_tree
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.gcpause import bulk_allocation, release
from ckpt_inspector.core.layouts import open_checkpoint
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


def open_file(path: str) -> Checkpoint:
    """The checkpoint at ``path`` (a file, a folder or an index of a checkpoint made of
    several files); any failure is a :class:`CheckpointError` (a reader bug
    must still end in one clear line)."""
    try:
        with bulk_allocation():
            return open_checkpoint(path)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"unexpected {type(err).__name__} while reading: {err}") from err


def load_file(path: str) -> LoadedFile:
    start = time.perf_counter()
    ckpt = open_file(path)
    with bulk_allocation():
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
