"""Heavy work off the GUI thread: one runner for jobs on a worker thread (:mod:`worker`,
superqt's workers as napari uses them, without superqt) and for commands in a child process
(anything that imports torch).

Every task has a label shown in the status bar, its last :class:`Progress` (so the window
shows how far it is without asking the view that started it), a :class:`CancelToken` and
the same callbacks wherever it runs. A cancelled or superseded task's result is dropped,
never applied. Errors go to one reporter unless the caller takes them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from ckpt_inspector.core.progress import CancelToken, Progress
from ckpt_inspector.gui.commands import CliProcess, CommandFailed
from ckpt_inspector.gui.worker import Worker


class ChildError(CommandFailed):
    """A command in a child process failed; its message is the child's last line."""


class Task:
    def __init__(self, label: str, quiet: bool = False):
        self.label = label
        self.quiet = quiet  # shown by its owner, not in the status bar
        self.cancelled = False
        self.token = CancelToken()  # what a job's inner loops check (threads of a pass)
        self.progress: Progress | None = None  # the last report
        self.worker: Worker | CliProcess | None = None
        self.on_cancel: Callable[[], None] | None = None

    @property
    def fraction(self) -> float | None:
        """How far it is, when the job says (0 to 1)."""
        p = self.progress
        return p.done / p.total if p is not None and p.total else None


class JobRunner(QObject):
    """Starts tasks and keeps the list of running ones for the status bar. ``changed`` when
    a task starts, ends or reports progress (not for quiet tasks)."""

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
            on_cancel: Callable[[], None] | None = None, quiet: bool = False,
            cancellable: bool = False, reports: bool = False) -> Task:
        """Run ``fn(*args)`` (a function or a job: a generator function) on a worker thread.

        A ``cancellable`` ``fn`` also gets ``cancel=`` the task's token, which cancelling
        sets, so a job stops within a step (a chunk, a tensor), not only between its yields.
        A function that ``reports`` gets ``progress=``, a callable taking a
        :class:`Progress` from any thread, delivered as a generator's yields are.
        ``on_cancel`` runs when the user cancels; ``on_discard`` receives the result of a
        task that was cancelled meanwhile. A ``quiet`` task stays out of :attr:`tasks` (the
        status bar): its owner shows its progress and cancels it.
        """
        task = self._task(label, quiet, on_cancel)
        kwargs: dict[str, Any] = {"cancel": task.token} if cancellable else {}
        if reports:  # a function that says how far it is, from its thread or others
            kwargs["progress"] = lambda report: Worker.emit(worker.yielded, report)

        def returned(result: Any) -> None:
            # a worker told to quit (the window closing) hands its result to nobody's view
            if not (task.cancelled or worker.abort_requested):
                on_result(result)
            elif on_discard is not None:
                on_discard(result)

        worker = Worker(fn, *args, **kwargs)
        worker.returned.connect(returned)
        worker.errored.connect(self._errored(task, on_error))
        worker.finished.connect(lambda: self._finished(task))
        if on_progress is not None or reports or inspect.isgeneratorfunction(fn):
            worker.yielded.connect(self._progressed(task, on_progress))
        task.worker = worker
        self._started(task)
        worker.start()
        return task

    def run_child(self, label: str, argv: list[str], *,
                  on_result: Callable[[dict[str, Any]], None],
                  on_error: Callable[[BaseException], None] | None = None,
                  on_progress: Callable[[Progress], None] | None = None,
                  on_cancel: Callable[[], None] | None = None, quiet: bool = False,
                  ok_codes: tuple[int, ...] = (0,)) -> Task:
        """Run ``ckpt-inspector ARGV --progress`` in a child process, with the callbacks of
        :meth:`run`: its progress lines, then its JSON result (its exit code one of
        ``ok_codes``); a failure is a :class:`ChildError`. Cancelling kills the child."""
        task = self._task(label, quiet, on_cancel)
        proc = CliProcess(argv, self, ok_codes)
        progressed = self._progressed(task, on_progress)
        proc.progress.connect(lambda m: progressed(Progress(
            str(m.get("stage", "")), int(m.get("done") or 0), int(m.get("total") or 0),
            str(m.get("detail", "")))))
        errored = self._errored(task, on_error)

        def done(result: dict[str, Any]) -> None:
            self._finished(task)
            if not task.cancelled:
                on_result(result)

        def failed(message: str) -> None:
            self._finished(task)
            errored(ChildError(message))

        proc.done.connect(done)
        proc.failed.connect(failed)
        task.worker = proc
        self._started(task)
        return task

    def cancel(self, task: Task) -> None:
        task.cancelled = True
        task.token.cancel()
        worker = task.worker
        if isinstance(worker, CliProcess):
            worker.kill()
        elif worker is not None:
            worker.quit()
        self._finished(task)
        if task.on_cancel is not None:
            task.on_cancel()

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            self.cancel(task)

    # -- the same bookkeeping for both kinds ----------------------------------------------------
    @staticmethod
    def _task(label: str, quiet: bool, on_cancel: Callable[[], None] | None) -> Task:
        task = Task(label, quiet)
        task.on_cancel = on_cancel
        return task

    def _started(self, task: Task) -> None:
        if not task.quiet:
            self.tasks.append(task)
            self.changed.emit()

    def _progressed(self, task: Task, on_progress: Callable[[Any], None] | None
                    ) -> Callable[[Any], None]:
        def progressed(value: Any) -> None:
            worker = task.worker
            if task.cancelled or (isinstance(worker, Worker) and worker.abort_requested):
                return  # queued before the worker was told to stop: its view may be gone
            if isinstance(value, Progress):
                task.progress = value
                if task in self.tasks:
                    self.changed.emit()
            if on_progress is not None:
                on_progress(value)
        return progressed

    def _errored(self, task: Task, on_error: Callable[[BaseException], None] | None
                 ) -> Callable[[BaseException], None]:
        def errored(err: BaseException) -> None:
            worker = task.worker
            if task.cancelled or (isinstance(worker, Worker) and worker.abort_requested):
                return
            if on_error is not None:
                on_error(err)
            else:
                self._on_error(task.label, err)
        return errored

    def _finished(self, task: Task) -> None:
        if task in self.tasks:
            self.tasks.remove(task)
            self.changed.emit()
