"""The Files dock yields room to the checkpoint in a narrow window.

On a 1024-pixel screen a 220-pixel Files panel leaves the key tree too little for its
columns; the dock gives way as the window narrows (see :func:`dock_cap`), and takes back
the width the user gave it when the window grows again. A width the user sets by dragging
the dock's edge is the one it keeps, in this session and the next.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QSettings, Qt, QTimer
from PySide6.QtWidgets import QDockWidget, QMainWindow

LEAST = 150  # the dock's width in a window of NARROW pixels or less
NARROW = 1024  # from here up, the dock may be a fifth of the window's extra width wider
SETTING = "filesPanelWidth"


def dock_cap(window_width: int) -> int:
    """The widest a docked side panel may be in a window this wide: 150 at 1,024 pixels,
    220 (its first width) from 1,374."""
    return LEAST + max(0, window_width - NARROW) // 5


def width_for(dock_width: int) -> int:
    """The least window width whose cap lets the dock be ``dock_width`` wide."""
    return NARROW + max(0, dock_width - LEAST) * 5


class DockYield(QObject):
    """Keeps ``dock`` within :func:`dock_cap` of ``window``'s width (see the module)."""

    def __init__(self, window: QMainWindow, dock: QDockWidget, preferred: int,
                 settings: QSettings | None = None):
        super().__init__(window)
        self.window, self.dock, self.settings = window, dock, settings
        # the width the user wants (kept between sessions), and the window's width when
        # they chose it: in a window at least as wide it is theirs, in a narrower one the
        # cap holds too
        self.preferred, self.chosen_at = preferred, width_for(preferred)
        saved = str(settings.value(SETTING, "") if settings is not None else "")
        width, _at, at = saved.partition("@")
        if width.isdigit() and at.isdigit():
            self.preferred, self.chosen_at = int(width), int(at)
        self._expect: int | None = None  # the width asked of the dock, until it has it
        self._window_width = -1
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)  # after the window's layout has settled
        self._timer.timeout.connect(self.apply)
        window.installEventFilter(self)
        dock.installEventFilter(self)

    def _docked(self) -> bool:
        area = self.window.dockWidgetArea(self.dock)
        return (self.dock.isVisible() and not self.dock.isFloating()
                and area in (Qt.DockWidgetArea.LeftDockWidgetArea,
                             Qt.DockWidgetArea.RightDockWidgetArea))

    def apply(self) -> None:
        """The dock at the user's width, or the window's cap if that is less."""
        self._window_width = self.window.width()
        if not self._docked():
            return
        width = self.window.width()
        want = self.preferred if width >= self.chosen_at else min(self.preferred,
                                                                   dock_cap(width))
        if abs(self.dock.width() - want) > 2:
            self._expect = want  # the layout resizes the dock later: that one is ours
            self.window.resizeDocks([self.dock], [want], Qt.Orientation.Horizontal)

    def reset(self, width: int) -> None:
        """View › Reset layout: the first width, within the cap."""
        self.preferred, self.chosen_at = width, width_for(width)
        self.apply()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        kind = event.type()
        if watched is self.window and kind in (QEvent.Type.Resize, QEvent.Type.Show):
            self._timer.start()
        elif watched is self.window and kind == QEvent.Type.Close and self.settings is not None:
            self.settings.setValue(SETTING, f"{self.preferred}@{self.chosen_at}")
        elif watched is self.dock and kind == QEvent.Type.Resize and self._docked():
            if self._expect is not None and abs(self.dock.width() - self._expect) <= 2:
                self._expect = None  # what apply asked for
            elif (self._expect is None and self.window.width() == self._window_width
                  and not self._timer.isActive()):
                # the window kept its width: the user dragged the dock's edge
                self.preferred, self.chosen_at = self.dock.width(), self.window.width()
        return False
