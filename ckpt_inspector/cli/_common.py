"""What several commands share: opening a file (as the window does), printing a job's
progress."""

from __future__ import annotations

from collections.abc import Callable

from ckpt_inspector.cli._errors import progress
from ckpt_inspector.core.ops.session import open_file as open_file  # as the window opens
from ckpt_inspector.core.progress import Progress, progress_line


def _print_progress(report: Progress) -> None:
    progress(progress_line(report))


def progress_printer(enabled: bool) -> Callable[[Progress], None] | None:
    """``--progress``: each report as a JSON line on stdout."""
    return _print_progress if enabled else None
