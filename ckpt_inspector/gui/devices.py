"""The devices torch can put tensors on, found without importing torch in the app.

Importing torch takes seconds and about 900 MB, and holds the GIL, which would freeze the
window; so the list (with each device's free memory) comes from ``ckpt-inspector devices
--json`` run as a child process, and only when the user first opens the device picker:
until then the picker shows the remembered choice alone.
"""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import QObject, QProcess, QSize, Signal
from PySide6.QtWidgets import QComboBox

from ckpt_inspector.core.summary import human_bytes
from ckpt_inspector.gui.commands import cli_command

LISTING = "listing devices…"  # the picker's placeholder row while the child runs


def device_command() -> list[str]:
    return cli_command("devices", "--json")


class DeviceBox(QComboBox):
    """The device picker; ``opening`` is emitted each time its list is about to drop down
    (by mouse or keyboard), before it shows."""

    opening = Signal()

    def showPopup(self) -> None:
        self.opening.emit()
        super().showPopup()

    def refit_popup(self) -> None:
        """Size the open list to its rows, on the screen: filled while open (hiding it and
        showing it again can leave it closed on screen but open to Qt)."""
        view = self.view()
        frame = view.parentWidget()
        if frame is None or not frame.isVisible():
            return
        rows = min(self.count(), self.maxVisibleItems())
        extra_h, extra_w = frame.height() - view.height(), frame.width() - view.width()
        height = sum(view.sizeHintForRow(i) for i in range(rows)) + 2 * view.frameWidth()
        geometry = frame.geometry()
        geometry.setSize(QSize(max(frame.width(), view.minimumWidth() + extra_w),
                               height + extra_h))
        screen = self.screen().availableGeometry()
        if geometry.right() > screen.right():
            geometry.moveRight(screen.right())
        frame.setGeometry(geometry)


class DeviceProbe(QObject):
    """Emits ``found([{"id": "cuda:0", "label": "cuda:0 — NVIDIA H200", "free_bytes": ...},
    ...])`` once, after :meth:`start`."""

    found = Signal(list)
    failed = Signal(str)

    def __init__(self, parent: Any = None):
        super().__init__(parent)
        self.started = False  # start() was called: the child runs, or has run
        self.process = QProcess(self)
        self.process.finished.connect(self._done)
        self.process.errorOccurred.connect(lambda _e: self.failed.emit(
            self.process.errorString()))

    def start(self) -> None:
        self.started = True
        cmd = device_command()
        self.process.start(cmd[0], cmd[1:])

    def _done(self, code: int, _status: Any) -> None:
        out = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        if code != 0:
            err = bytes(self.process.readAllStandardError()).decode("utf-8", "replace")
            self.failed.emit(err.strip().splitlines()[-1] if err.strip() else f"exit {code}")
            return
        try:
            devices = parse_devices(out)
        except ValueError:
            self.failed.emit("could not read the device list")
            return
        self.found.emit(devices)

    def stop(self) -> None:
        if self.process.state() != QProcess.ProcessState.NotRunning:
            self.process.kill()
            self.process.waitForFinished(2000)


def parse_devices(text: str) -> list[dict[str, Any]]:
    """The devices in ``devices --json``'s output: each with a string ``id`` and
    ``label``, and ``free_bytes``/``total_bytes`` as ints or ``None`` (an older or broken
    child's other values are dropped). ValueError when it is not such a list."""
    try:
        listed = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(str(err)) from None
    if not isinstance(listed, list):
        raise ValueError("not a list")
    out = []
    for d in listed:
        if not isinstance(d, dict) or not isinstance(d.get("id"), str):
            raise ValueError("a device without an id")
        d = dict(d, label=str(d.get("label") or d["id"]))
        for key in ("free_bytes", "total_bytes"):
            value = d.get(key)
            d[key] = value if type(value) is int and value >= 0 else None
        out.append(d)
    return out


def device_label(device: dict[str, Any]) -> str:
    """``cuda:0 — NVIDIA H200 · 131.2 GiB free``, ``cpu · 20.1 GiB available``: the
    picker's text for a device (its free memory when the child could tell)."""
    free = device.get("free_bytes")
    if not isinstance(free, int):
        return device["label"]
    word = "available" if device["id"] == "cpu" else "free"
    return f"{device['label']} · {human_bytes(free)} {word}"


def show_listing(box: QComboBox) -> None:
    """While the child lists the devices: a greyed row under the remembered choice."""
    if box.findText(LISTING) < 0:
        box.addItem(LISTING)
        item = box.model().item(box.count() - 1)  # type: ignore[attr-defined]
        item.setEnabled(False)


def fill_device_box(box: QComboBox, devices: list[dict[str, Any]], wanted: str
                    ) -> tuple[int, str]:
    """List ``devices`` (``label``, ``id``) in ``box``, ``wanted`` current if it is there;
    the index chosen, and a note for the status bar when ``wanted`` is not."""
    box.blockSignals(True)
    box.clear()
    for d in devices:
        box.addItem(device_label(d), d["id"])
    index = box.findData(wanted)
    note = ""
    if index < 0:
        index = 0
        if wanted != "cpu":
            note = f"{wanted} is not available here; using cpu"
    box.setCurrentIndex(index)
    view = box.view()  # the list shows whole labels; the box itself stays narrow
    metrics = view.fontMetrics()
    widest = max((metrics.horizontalAdvance(box.itemText(i)) for i in range(box.count())),
                 default=0)
    view.setMinimumWidth(widest + 2 * view.frameWidth() + 6 * metrics.averageCharWidth())
    box.blockSignals(False)
    return index, note
