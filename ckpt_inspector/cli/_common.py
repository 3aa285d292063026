"""What several commands share: opening a file, printing a job's progress."""

from __future__ import annotations

from collections.abc import Callable

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats import open_checkpoint
from ckpt_inspector.core.gcpause import bulk_allocation
from ckpt_inspector.core.progress import Progress, progress_line
from ckpt_inspector.core.tree import Checkpoint


def open_file(path: str) -> Checkpoint:
    """The checkpoint at ``path``; any failure is a :class:`CheckpointError` (a reader bug
    must still end in one clear line)."""
    try:
        with bulk_allocation():
            return open_checkpoint(path)
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(f"unexpected {type(err).__name__} while reading: {err}") from err


def _print_progress(report: Progress) -> None:
    print(progress_line(report), flush=True)


def progress_printer(enabled: bool) -> Callable[[Progress], None] | None:
    """``--progress``: each report as a JSON line on stdout."""
    return _print_progress if enabled else None
