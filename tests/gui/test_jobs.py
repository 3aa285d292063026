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
