"""A function or a generator function run on a thread of Qt's global pool, what it gives
delivered as signals on the GUI thread.

The window used superqt's ``create_worker`` for this (as napari does), and this keeps its
signals and its rules: ``yielded`` for each value a generator yields, ``returned`` with
the result, ``errored`` with the exception (never raised into the event loop), then
``finished``; :meth:`Worker.quit` asks a generator to stop at its next ``yield``. Importing
``superqt.utils`` imports all of superqt, qtpy and pygments: a third of a second of every
start of the window, for forty lines.

One difference: a function worker that was asked to quit still emits ``returned`` (its
result exists; the job runner gives it to ``on_discard`` so that what it opened is
released), while an aborted generator is closed and returns nothing.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable
from typing import Any, ClassVar

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

# While a worker runs Python, the window's thread waits for the interpreter's lock each
# time it calls into Python (a timer, a model's data, a paint), up to this long each time:
# at Python's default 5 ms, opening 100,000 tensors stalled the window 60-170 ms; at 1 ms
# the longest stall is about 40 ms, for a few percent of the worker's speed
SWITCH_INTERVAL = 0.001


class _Signals(QObject):
    returned = Signal(object)
    errored = Signal(object)
    yielded = Signal(object)
    finished = Signal()
    done = Signal(object)  # the worker, after ``finished``: it leaves ``Worker.running``


def _forget(worker: Worker) -> None:
    Worker.running.discard(worker)


class Worker(QRunnable):
    """``fn(*args, **kwargs)`` on a pool thread; connect to its signals, then :meth:`start`."""

    # started and not yet finished (or never delivered: no event loop ran meanwhile); the
    # set also keeps each Python object alive while Qt runs it
    running: ClassVar[set[Worker]] = set()

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        super().__init__()
        self.setAutoDelete(False)  # Python owns it (see ``running``)
        self._call = (fn, args, kwargs)
        self._abort = False
        self.signals = _Signals()
        self.returned = self.signals.returned
        self.errored = self.signals.errored
        self.yielded = self.signals.yielded
        self.finished = self.signals.finished
        # queued onto the GUI thread, where the signals object lives (a function, not a
        # closure over the worker: a connection the collector cannot see would keep it)
        self.signals.done.connect(_forget)

    @property
    def abort_requested(self) -> bool:
        return self._abort

    def quit(self) -> None:
        """Ask a generator to stop at its next ``yield``; a function runs to its end."""
        self._abort = True

    def start(self) -> None:
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        Worker.running.add(self)
        QThreadPool.globalInstance().start(self)

    def run(self) -> None:  # on the pool thread
        fn, args, kwargs = self._call
        self._call = None  # what the job holds is not kept past its end
        try:
            result = fn(*args, **kwargs)
            if inspect.isgenerator(result):
                result = self._drive(result)
            if result is not _ABORTED:
                self.emit(self.signals.returned, result)
        except Exception as exc:  # every error goes to ``errored``, never the event loop
            self.emit(self.signals.errored, exc)
        finally:
            self.emit(self.signals.finished)
            self.emit(self.signals.done, self)

    @staticmethod
    def emit(signal: Any, *args: Any) -> None:
        # "Signal source has been deleted": the app quit meanwhile (a read of a million
        # tensors outlasts the wait at exit), and there is no one to tell
        with contextlib.suppress(RuntimeError):
            signal.emit(*args)

    def _drive(self, gen: Any) -> Any:
        try:
            while True:
                if self._abort:
                    return _ABORTED
                try:
                    value = next(gen)
                except StopIteration as stop:
                    return stop.value
                self.emit(self.signals.yielded, value)
        finally:
            gen.close()  # its ``finally`` blocks run now, on this thread

    @classmethod
    def await_all(cls, msecs: int = -1) -> bool:
        """Ask every running worker to quit and wait up to ``msecs`` for the pool to be
        idle; whether it is."""
        for worker in list(cls.running):
            worker.quit()
        return QThreadPool.globalInstance().waitForDone(msecs)


_ABORTED = object()
