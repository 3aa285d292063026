"""The devices torch can put tensors on, found without importing torch in the app.

Importing torch takes seconds and holds the GIL, which would freeze the window;
so the list comes from ``ckpt-inspector devices --json`` run as a child process
after the window shows.
"""

from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import QObject, QProcess, Signal
from PySide6.QtWidgets import QComboBox

from ckpt_inspector.gui.commands import cli_command


def device_command() -> list[str]:
    return cli_command("devices", "--json")


class DeviceProbe(QObject):
    """Emits ``found([{"id": "cuda:0", "label": "cuda:0 — NVIDIA H200"}, ...])`` once."""

    found = Signal(list)
    failed = Signal(str)

    def __init__(self, parent: Any = None):
        super().__init__(parent)
        self.process = QProcess(self)
        self.process.finished.connect(self._done)
        self.process.errorOccurred.connect(lambda _e: self.failed.emit(
            self.process.errorString()))

    def start(self) -> None:
        cmd = device_command()
        self.process.start(cmd[0], cmd[1:])

    def _done(self, code: int, _status: Any) -> None:
        out = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        if code != 0:
            err = bytes(self.process.readAllStandardError()).decode("utf-8", "replace")
            self.failed.emit(err.strip().splitlines()[-1] if err.strip() else f"exit {code}")
            return
        try:
            self.found.emit(json.loads(out))
        except json.JSONDecodeError:
            self.failed.emit("could not read the device list")

    def stop(self) -> None:
        if self.process.state() != QProcess.ProcessState.NotRunning:
            self.process.kill()
            self.process.waitForFinished(2000)


def fill_device_box(box: QComboBox, devices: list[dict[str, Any]], wanted: str
                    ) -> tuple[int, str]:
    """List ``devices`` (``label``, ``id``) in ``box``, ``wanted`` current if it is there;
    the index chosen, and a note for the status bar when ``wanted`` is not."""
    box.blockSignals(True)
    box.clear()
    for d in devices:
        box.addItem(d["label"], d["id"])
    index = box.findData(wanted)
    note = ""
    if index < 0:
        index = 0
        if wanted != "cpu":
            note = f"{wanted} is not available here; using cpu"
    box.setCurrentIndex(index)
    box.blockSignals(False)
    return index, note
