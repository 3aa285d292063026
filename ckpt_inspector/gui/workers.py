"""Heavy work off the GUI thread, through superqt's workers (as napari does).

Every task has a label shown in the status bar and can be cancelled; a
cancelled or superseded task's result is dropped, never applied. Errors go to
one reporter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal
from superqt.utils import WorkerBase, create_worker


class Task:
    def __init__(self, label: str, quiet: bool = False):
        self.label = label
        self.quiet = quiet  # shown by its owner, not in the status bar
        self.cancelled = False
        self.worker: WorkerBase | None = None
        self.on_cancel: Callable[[], None] | None = None


class TaskRunner(QObject):
    """Starts workers and keeps the list of running tasks for the status bar."""

    changed = Signal()

    def __init__(self, on_error: Callable[[str, BaseException], None], parent: Any = None):
        super().__init__(parent)
        self._on_error = on_error
        self.tasks: list[Task] = []

    def run(self, label: str, fn: Callable[..., Any], *args: Any,
            on_result: Callable[[Any], None],
            on_error: Callable[[BaseException], None] | None = None,
            on_progress: Callable[[Any], None] | None = None,
            on_discard: Callable[[Any], None] | None = None,
            on_cancel: Callable[[], None] | None = None, quiet: bool = False) -> Task:
        """Run ``fn(*args)`` (a function or a generator function) on a worker thread.

        ``on_cancel`` runs when the user cancels; ``on_discard`` receives the result of
        a task that was cancelled meanwhile. A ``quiet`` task stays out of :attr:`tasks`
        (the status bar): its owner shows its progress and cancels it.
        """
        task = Task(label, quiet)
        task.on_cancel = on_cancel

        def returned(result: Any) -> None:
            if not task.cancelled:
                on_result(result)
            elif on_discard is not None:
                on_discard(result)

        def errored(err: BaseException) -> None:
            if task.cancelled:
                return
            if on_error is not None:
                on_error(err)
            else:
                self._on_error(label, err)

        connect: dict[str, Any] = {"returned": returned, "errored": errored,
                                   "finished": lambda: self._finished(task)}
        if on_progress is not None:
            connect["yielded"] = lambda v: None if task.cancelled else on_progress(v)
        # errors go to our handler, never re-raised into the event loop
        worker = create_worker(fn, *args, _start_thread=False, _connect=connect)
        task.worker = worker
        if not quiet:
            self.tasks.append(task)
            self.changed.emit()
        worker.start()
        return task

    def cancel(self, task: Task) -> None:
        task.cancelled = True
        if task.worker is not None:
            task.worker.quit()
        self._finished(task)
        if task.on_cancel is not None:
            task.on_cancel()

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            self.cancel(task)

    def _finished(self, task: Task) -> None:
        if task in self.tasks:
            self.tasks.remove(task)
            self.changed.emit()
