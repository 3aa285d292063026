"""The one job runner: threads and child processes, the same callbacks, progress on the task."""

from __future__ import annotations

import time

from ckpt_inspector.core.progress import Progress
from ckpt_inspector.gui.jobs import ChildError, JobRunner

WAIT = 60_000


def counting(n, cancel=None):
    for i in range(n):
        yield Progress("counting", i + 1, n)
    return n


def endless(cancel=None):
    while not cancel.is_set():
        time.sleep(0.01)
        yield Progress("waiting")
    return "stopped"


def test_a_thread_job_reports_progress_on_its_task(qtbot):
    runner = JobRunner(lambda label, err: None)
    results, seen = [], []
    task = runner.run("Counting", counting, 4, cancellable=True, on_result=results.append,
                      on_progress=seen.append)
    assert runner.tasks == [task]
    qtbot.waitUntil(lambda: results == [4], timeout=WAIT)
    assert [p.done for p in seen] == [1, 2, 3, 4]
    assert task.progress.done == 4 and task.fraction == 1.0
    assert runner.tasks == []


def test_cancelling_sets_the_token_and_drops_the_result(qtbot):
    runner = JobRunner(lambda label, err: None)
    results, discarded, cancelled = [], [], []
    task = runner.run("Waiting", endless, cancellable=True, on_result=results.append,
                      on_discard=discarded.append, on_cancel=lambda: cancelled.append(True),
                      quiet=True)
    assert runner.tasks == []  # quiet: its owner shows it
    qtbot.waitUntil(lambda: task.progress is not None, timeout=WAIT)
    assert task.fraction is None  # it cannot say how far it is
    runner.cancel(task)
    assert task.token.cancelled and task.cancelled and cancelled == [True]
    qtbot.wait(200)
    assert results == []


def test_a_child_that_fails_reports_a_child_error(qtbot):
    errors = []
    runner = JobRunner(lambda label, err: errors.append((label, err)))
    runner.run_child("Statistics", ["stats", "/no/such/file.pt", "--progress"],
                     on_result=lambda r: None)
    qtbot.waitUntil(lambda: bool(errors), timeout=WAIT)
    label, err = errors[0]
    assert label == "Statistics" and isinstance(err, ChildError) and str(err)
    assert runner.tasks == []


def slow_value(started):
    started.append(True)
    time.sleep(0.3)
    return "opened"


def test_a_cancelled_function_job_hands_its_result_to_on_discard(qtbot):
    """What a cancelled read opened is still released (superqt's workers dropped it)."""
    runner = JobRunner(lambda label, err: None)
    started, results, discarded = [], [], []
    task = runner.run("Reading", slow_value, started, on_result=results.append,
                      on_discard=discarded.append)
    qtbot.waitUntil(lambda: started == [True], timeout=WAIT)
    runner.cancel(task)
    qtbot.waitUntil(lambda: discarded == ["opened"], timeout=WAIT)
    assert results == []


def test_a_worker_stops_a_generator_at_its_next_yield_and_closes_it(qtbot):
    from ckpt_inspector.gui.worker import Worker

    closed, returned, values = [], [], []

    def gen():
        try:
            for i in range(10_000):
                time.sleep(0.005)
                yield i
        finally:
            closed.append(True)
        return "all"

    worker = Worker(gen)
    worker.yielded.connect(values.append)
    worker.returned.connect(returned.append)
    worker.start()
    qtbot.waitUntil(lambda: len(values) >= 3, timeout=WAIT)
    worker.quit()
    qtbot.waitUntil(lambda: worker not in Worker.running, timeout=WAIT)
    assert closed == [True] and returned == [] and len(values) < 10_000


def test_a_worker_reports_an_error_once_and_never_raises_it(qtbot):
    from ckpt_inspector.gui.worker import Worker

    def boom():
        raise ValueError("bad file")

    errors, finished = [], []
    worker = Worker(boom)
    worker.errored.connect(errors.append)
    worker.finished.connect(lambda: finished.append(True))
    worker.start()
    qtbot.waitUntil(lambda: finished == [True], timeout=WAIT)
    assert len(errors) == 1 and str(errors[0]) == "bad file"


def test_a_worker_whose_signals_are_gone_ends_quietly(qtbot, capfd):
    """The app quit while a long read ran (its signals object deleted at exit): the worker
    ends without "Signal source has been deleted" tracebacks."""
    import threading

    import shiboken6
    from PySide6.QtCore import QThreadPool

    from ckpt_inspector.gui.worker import Worker

    release = threading.Event()

    def long_read():
        release.wait(10)
        return "tree"

    worker = Worker(long_read)
    worker.start()
    shiboken6.delete(worker.signals)
    release.set()
    assert QThreadPool.globalInstance().waitForDone(10_000)
    Worker.running.discard(worker)
    assert "Signal source has been deleted" not in capfd.readouterr().err


def test_a_running_worker_hands_the_lock_to_the_window_often(qtbot):
    """Python's default 5 ms switch interval, paid at each of the window's calls into
    Python while a worker runs Python, made 60-170 ms stalls opening 100,000 tensors."""
    import sys

    from ckpt_inspector.gui import worker

    previous = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        results = []
        runner = JobRunner(lambda label, err: None)
        runner.run("Counting", counting, 2, on_result=results.append)
        qtbot.waitUntil(lambda: results == [2], timeout=WAIT)
        assert sys.getswitchinterval() == worker.SWITCH_INTERVAL <= 0.001
    finally:
        sys.setswitchinterval(previous)
