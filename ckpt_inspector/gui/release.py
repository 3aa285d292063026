"""Free a file the window let go of, a few milliseconds at a time on the GUI thread.

Freeing the trees of 100,000s of tensors takes 0.1 to 0.3 s. Done at once it freezes the
window when a tab closes or a file is read again; done on another thread it competes for
the GIL with the next read and the window's thread alike. Here it runs in slices between
the window's events, so the window never waits more than a slice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from PySide6.QtCore import QTimer

from ckpt_inspector.core.ops.session import LoadedFile, release_file_steps

SLICE_S = 0.004
_pending: set[QTimer] = set()  # the timers still freeing (each keeps its own alive)


def release_soon(file: LoadedFile) -> None:
    """Break ``file``'s trees in slices; nothing may use them any more."""
    steps = release_file_steps(file, per=512)
    timer = QTimer()
    timer.setInterval(0)
    timer.timeout.connect(lambda: _slice(steps, timer))
    _pending.add(timer)
    timer.start()


def _slice(steps: Iterator[None], timer: QTimer) -> None:
    deadline = time.perf_counter() + SLICE_S
    for _ in steps:
        if time.perf_counter() > deadline:
            return
    timer.stop()
    _pending.discard(timer)


def pending() -> int:
    """How many files are still being freed (for the tests)."""
    return len(_pending)
