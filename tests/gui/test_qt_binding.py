"""The Qt binding itself: a release that leaks or drops references breaks every long session."""

from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Signal


class _Emitter(QObject):
    ping = Signal(object)
    bare = Signal()


def test_emitting_signals_keeps_the_reference_count_of_true():
    """PySide6 6.12.0 drops a reference to ``True`` on every ``emit()``; after a few
    thousand signals (one per key of a comparison) Python aborts with bool_dealloc."""
    emitter = _Emitter()
    emitter.ping.connect(lambda _v: None)
    before = sys.getrefcount(True)
    for _ in range(500):
        emitter.ping.emit(1)
        emitter.bare.emit()
    assert sys.getrefcount(True) >= before - 10
