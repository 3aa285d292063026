"""pyqtgraph takes half a second to import: import it on a worker before the first tensor
is picked, and tell the views whether it is there.

The import holds the interpreter for stretches of up to a second (it stalls the GUI thread
and slows a read on another worker), so it starts once the window is idle: after a file's
tree is shown and no read runs (:func:`preload_when_idle`), or when a tensor's plots are
first needed."""

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
    """True once the import on a worker is over (importing here then costs nothing; if it
    failed, importing here shows why)."""
    return _PRELOAD["done"]


def preload_when_idle(runner: JobRunner) -> bool:
    """Start the import unless a task (a read) runs; True once it is started."""
    if not _PRELOAD["started"] and not runner.tasks:
        preload_plots(runner)
    return _PRELOAD["started"]
