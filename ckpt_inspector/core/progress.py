"""Long work as a job: what it reports between steps, how it is stopped, how it is run.

A job is a generator that yields :class:`Progress` (each yield is also a point where the
caller may stop it) and returns its result: ``Job[T] = Generator[Progress, None, T]``.
:func:`run` drives one to its end; a :class:`CancelToken` stops it at its next step with
:class:`Cancelled`. The JSON-lines protocol a child process uses to report a job's
progress and result (``--progress``) is written and read here, in one place.
"""

from __future__ import annotations

import contextvars
import json
import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Progress:
    stage: str
    done: int = 0
    total: int = 0
    detail: str = ""


Job = Generator[Progress, None, T]


class Cancelled(Exception):
    """The job was cancelled before it finished."""


class CancelToken(threading.Event):
    """Set by whoever wants a job to stop; the job checks it at each step. An Event, so
    code that waits or polls (``is_set``) takes it as is."""

    def cancel(self) -> None:
        self.set()

    @property
    def cancelled(self) -> bool:
        return self.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the token was set."""
        if self.is_set():
            raise Cancelled()


def run(job: Job[T], on_progress: Callable[[Progress], Any] | None = None,
        cancel: threading.Event | None = None) -> T:
    """Drive ``job`` to its end and return its result, passing each progress report to
    ``on_progress``. When ``cancel`` is set the job is closed at its next step and
    :class:`Cancelled` raised."""
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            try:
                report = next(job)
            except StopIteration as stop:
                return stop.value
            if on_progress is not None and isinstance(report, Progress):
                on_progress(report)
    finally:
        job.close()


# Progress from inside a plain function (a reader deep in a layout): whoever runs it sets
# where reports go for the context; a copied context (the threads that read shards) reports
# there too, so the callback must be safe to call from any thread.
_reporter: contextvars.ContextVar[Callable[[Progress], Any] | None] = contextvars.ContextVar(
    "ckpt_inspector_reporter", default=None)


@contextmanager
def reporting(to: Callable[[Progress], Any] | None) -> Iterator[None]:
    """:func:`report` calls in this context go to ``to`` (None: nowhere)."""
    reset = _reporter.set(to)
    try:
        yield
    finally:
        _reporter.reset(reset)


def report(stage: str, done: int = 0, total: int = 0, detail: str = "") -> None:
    to = _reporter.get()
    if to is not None:
        to(Progress(stage, done, total, detail))


def reporter() -> Callable[[Progress], Any] | None:
    """Where :func:`report` calls go now (None: nowhere), for a loop that reports often
    and looks it up once."""
    return _reporter.get()


@contextmanager
def muted() -> Iterator[None]:
    """No reports from inside the block: one file of a checkpoint made of many, whose
    layout reports which file it reads (a bar counting files must not jump to one
    file's bytes and back)."""
    with reporting(None):
        yield


# The JSON-lines protocol of ``--progress``: progress lines, then one result line.

def progress_line(report: Progress) -> str:
    return json.dumps({"event": "progress", **asdict(report)})


def result_line(result: dict) -> str:
    return json.dumps({"event": "result", **result})


def parse_line(line: str | bytes) -> Progress | dict | None:
    """One line of a child's output: a :class:`Progress`, the result (a dict), or None for
    anything else (a blank line, a stray print)."""
    try:
        msg = json.loads(line)
    except ValueError:
        return None
    if not isinstance(msg, dict):
        return None
    if msg.get("event") == "progress":
        return Progress(str(msg.get("stage", "")), int(msg.get("done") or 0),
                        int(msg.get("total") or 0), str(msg.get("detail", "")))
    return msg
