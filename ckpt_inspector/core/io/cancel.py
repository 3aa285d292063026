"""Stopping a read between two requests of a remote file, or between two steps of a long
local one (the pickle interpreter checks every few thousand opcodes): a cancel token set
for a context (the window's Cancel, for the job that opens a file)."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ckpt_inspector.core.progress import Cancelled

_cancel: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "ckpt_inspector_cancel", default=None)


@contextmanager
def cancellable(token: threading.Event | None) -> Iterator[None]:
    """Reads of remote files in this context (and in contexts copied from it: the threads
    that read a model's shards) stop at their next request once ``token`` is set, with
    :class:`~ckpt_inspector.core.progress.Cancelled`."""
    reset = _cancel.set(token)
    try:
        yield
    finally:
        _cancel.reset(reset)


def current_token() -> threading.Event | None:
    """The token of this context (None: nothing can cancel it), for a loop that checks it
    often and looks it up once."""
    return _cancel.get()


def check_cancelled() -> None:
    token = _cancel.get()
    if token is not None and token.is_set():
        raise Cancelled()
