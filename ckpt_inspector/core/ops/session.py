"""Opening a file: :func:`open_file` reads it (what every command calls), :func:`load_file`
also scans it and builds the tree people browse (grouped; the flat one on first use), its
totals and, for a LoRA adapter, its pairs (what the window does on a worker thread for every
file it opens). Qt-free."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.adapters import Adapter, find_adapter
from ckpt_inspector.core.display import DisplayNode, build_display_tree
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.gcpause import bulk_allocation, drop_steps, release_steps
from ckpt_inspector.core.io.cancel import cancellable
from ckpt_inspector.core.layouts import open_checkpoint
from ckpt_inspector.core.progress import Cancelled, Progress, reporting
from ckpt_inspector.core.progress import report as report_step
from ckpt_inspector.core.scan import ScanReport, scan
from ckpt_inspector.core.summary import totals
from ckpt_inspector.core.torch_load_prediction import predict
from ckpt_inspector.core.tree import Checkpoint


@dataclass
class LoadedFile:
    path: str
    ckpt: Checkpoint
    report: ScanReport
    grouped: DisplayNode
    flat: DisplayNode | None  # None until asked for (:meth:`tree`)
    totals: dict[str, Any]
    seconds: float
    adapter: Adapter | None = None  # the LoRA pairs of an adapter (core/adapters)
    # what torch.load would do with it (core/torch_load_prediction): made with the rest on
    # the worker, not when the window shows it (100,000s of calls are looked through)
    torch_load: Any = None

    def tree(self, grouped: bool) -> DisplayNode:
        """The grouped or the flat tree; the flat one is built on first use (a quarter of
        a second for 100,000 tensors that most people never ask for)."""
        if grouped:
            return self.grouped
        if self.flat is None:
            with bulk_allocation():
                self.flat = build_display_tree(self.ckpt.root, grouped=False)
        return self.flat


def open_file(path: str) -> Checkpoint:
    """The checkpoint at ``path`` (a file, a folder or an index of a checkpoint made of
    several files); any failure is a :class:`CheckpointError` (a reader bug
    must still end in one clear line)."""
    try:
        with bulk_allocation():
            return open_checkpoint(path)
    except (CheckpointError, Cancelled):
        raise
    except Exception as err:
        raise CheckpointError(f"unexpected {type(err).__name__} while reading: {err}") from err


def load_file(path: str, flat: bool = False, cancel: threading.Event | None = None,
              progress: Callable[[Progress], Any] | None = None) -> LoadedFile:
    """Read, scan and build the grouped tree of ``path`` (and the flat one with ``flat``,
    else on first use). Setting ``cancel`` stops a remote file's reading at its next
    request (:class:`~ckpt_inspector.core.progress.Cancelled`); ``progress`` hears how far
    it is (the files of a checkpoint made of many, then each step), from any thread."""
    start = time.perf_counter()
    with reporting(progress):
        with cancellable(cancel):
            ckpt = open_file(path)
        report_step("scanning")
        with bulk_allocation():
            report = scan(ckpt)
            report_step("building the tree")
            grouped = build_display_tree(ckpt.root, grouped=True)
            flat_tree = build_display_tree(ckpt.root, grouped=False) if flat else None
            file = LoadedFile(path, ckpt, report, grouped, flat_tree, totals(ckpt), 0.0)
    file.adapter = find_adapter(ckpt)
    file.torch_load = predict(ckpt, report, devices=file.totals.get("devices") or {})
    file.seconds = time.perf_counter() - start
    return file


def release_file(file: LoadedFile) -> None:
    """Free a file's trees now (they are cyclic, and frozen out of the collector)."""
    for _ in release_file_steps(file):
        pass


def release_file_steps(file: LoadedFile, per: int = 2048) -> Iterator[None]:
    """:func:`release_file` in steps of ``per`` nodes (see :func:`release_steps`), then the
    values the pickles built (see :func:`drop_steps`)."""
    for tree in (file.grouped, file.flat, file.ckpt.root):
        if tree is not None:
            yield from release_steps(tree, per)
    for record in file.ckpt.pickles:
        result = record.result
        parts = [result.value, result.calls]  # the calls: each tensor's rebuild, and more
        result.value, result.calls = None, []
        steps = drop_steps(parts, per)
        del parts  # drop_steps holds the only reference
        yield from steps
