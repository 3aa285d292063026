"""pyqtgraph takes half a second to import: import it on a worker before the first tensor
is picked, and tell the views whether importing it here would wait."""

from __future__ import annotations

from typing import Any

from ckpt_inspector.gui.jobs import JobRunner

_PRELOAD = {"started": False, "done": False}


def preload_plots(runner: JobRunner) -> None:
    """Import pyqtgraph (half a second) on a worker, before the first tensor is picked."""
    if _PRELOAD["started"]:
        return
    _PRELOAD["started"] = True

    def work() -> bool:
        try:
            import ckpt_inspector.gui.tensor.plots  # noqa: F401
        finally:
            # set here, not in a callback: the window that started the import may be closed
            # (its tasks cancelled, or deleted) before a result would reach it, and every
            # later tensor view in the process waits on this flag
            _PRELOAD["done"] = True
        return True

    def ignore(_result: Any) -> None:
        """An error shows when the GUI thread imports the module itself."""

    runner.run("Preparing plots", work, on_result=ignore, on_error=ignore, quiet=True)


def plots_ready() -> bool:
    """True unless the import is under way on a worker (then importing here would wait)."""
    return _PRELOAD["done"] or not _PRELOAD["started"]
