"""The device picker lists the devices (with their free memory) only when first opened, the
window starts without torch, and the summary says how much memory the tensors take and,
once the devices are listed, whether the weights fit. The devices' output is a fake
``devices --json`` (this machine has no GPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PySide6.QtCore import QProcess

from ckpt_inspector.gui import devices as devices_mod
from ckpt_inspector.gui.devices import LISTING, device_label, parse_devices
from ckpt_inspector.gui.html.memory import NOT_LISTED
from ckpt_inspector.gui.main_window import IDLE_AFTER_MS, MainWindow

from support import ROOT, open_and_wait

GIB = 1 << 30
FAKE = [{"id": "cpu", "label": "cpu", "free_bytes": 12 * GIB, "total_bytes": 16 * GIB,
         "free_is": "available system memory"},
        {"id": "cuda:0", "label": "cuda:0 — Fake GPU", "memory": 24 * GIB,
         "free_bytes": 20 * GIB, "total_bytes": 24 * GIB, "free_is": "torch.cuda.mem_get_info"},
        {"id": "cuda:1", "label": "cuda:1 — Tiny GPU", "memory": GIB, "free_bytes": 1024,
         "total_bytes": GIB, "free_is": "torch.cuda.mem_get_info"}]


# the offscreen platform cannot raise a popup or give it the keyboard (said once a popup)
POPUP = pytest.mark.qt_log_ignore("This plugin does not support (raise|grabbing the keyboard)")


def fake_devices(monkeypatch, listed=FAKE) -> None:
    """``devices --json`` answered by a child that prints ``listed`` (no torch)."""
    code = f"print({json.dumps(json.dumps(listed))})"
    monkeypatch.setattr(devices_mod, "device_command", lambda: [sys.executable, "-c", code])


def probing_window(qtbot, settings) -> MainWindow:
    win = MainWindow(settings=settings)  # probe_devices: as the app starts
    qtbot.addWidget(win)
    win.show()
    return win


def test_start_lists_no_devices(qtbot, settings, monkeypatch):
    """At start (and once idle), no child that imports torch: the picker holds the
    remembered choice alone."""
    started = []
    real_start = QProcess.start
    monkeypatch.setattr(QProcess, "start", lambda self, *a: (started.append(a),
                                                             real_start(self, *a)))
    settings.setValue("device", "cuda:0")
    win = probing_window(qtbot, settings)
    qtbot.wait(3 * IDLE_AFTER_MS)  # past the moment it used to start listing devices
    assert not win.probe.started
    assert win.probe.process.state() == QProcess.ProcessState.NotRunning
    assert not [a for a in started if "devices" in (a[1] if len(a) > 1 else [])]
    box = win.device_box
    assert [box.itemText(i) for i in range(box.count())] == ["cuda:0"]
    assert "listed when the Device picker is first opened" in win.about_text()
    win.close()


def test_the_window_starts_without_torch(tmp_path):
    """A fresh interpreter: the window shown, a file opened and idle, torch never
    imported (the import contract: the window never needs it)."""
    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": np.ones((4, 4), np.float32)}, str(path))
    script = f"""
import sys
from PySide6.QtCore import QProcess, QSettings, QTimer
from PySide6.QtWidgets import QApplication
from ckpt_inspector.gui.main_window import MainWindow
app = QApplication([])
win = MainWindow(settings=QSettings({str(tmp_path / 's.ini')!r}, QSettings.Format.IniFormat))
win.show()
win.open_paths([{str(path)!r}])
QTimer.singleShot(3000, app.quit)
app.exec()
running = [p.arguments() for p in win.findChildren(QProcess)
           if p.state() != QProcess.ProcessState.NotRunning]
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")), running,
      win.probe.started, win.current_view().file is not None)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[]", "[]", "False", "True"], proc.stdout


@POPUP
def test_opening_the_picker_lists_devices_with_free_memory(qtbot, settings, monkeypatch,
                                                           training_ckpt):
    fake_devices(monkeypatch)
    win = probing_window(qtbot, settings)
    view = open_and_wait(qtbot, win, training_ckpt[0])
    summary = view.summary.toPlainText()
    assert "Memory" in summary and "optimizer state" in summary and NOT_LISTED in summary
    box = win.device_box
    with qtbot.waitSignal(win.probe.found, timeout=60_000):
        box.showPopup()  # as a click on it does
        assert win.probe.started and box.findText(LISTING) >= 0
        assert not box.model().item(box.findText(LISTING)).isEnabled()
    labels = [box.itemText(i) for i in range(box.count())]
    assert labels == ["cpu · 12.0 GiB available", "cuda:0 — Fake GPU · 20.0 GiB free",
                      "cuda:1 — Tiny GPU · 1.0 KiB free"]
    popup = box.view()  # still open, sized to its new rows, whole labels
    assert popup.isVisible()
    widest = max(popup.fontMetrics().horizontalAdvance(label) for label in labels)
    assert popup.parentWidget().width() > widest and popup.parentWidget().height() > \
        3 * popup.fontMetrics().height()
    box.hidePopup()
    assert win.device_list[1]["free_bytes"] == 20 * GIB
    summary = view.summary.toPlainText()
    assert NOT_LISTED not in summary
    assert "Fits on cuda:0 (20.0 GiB free)" in summary and "no activations" in summary
    box.showPopup()  # listed once: opening it again starts nothing
    assert popup.parentWidget().width() > widest
    box.hidePopup()
    assert win.probe.process.state() == QProcess.ProcessState.NotRunning
    win.close()


def test_a_tab_opened_after_listing_says_at_once_whether_it_fits(qtbot, window,
                                                                  training_ckpt):
    window._devices_found(parse_devices(json.dumps([
        {"id": "cpu", "label": "cpu", "free_bytes": 100, "total_bytes": 200},
        {"id": "cuda:0", "label": "cuda:0 — Small", "free_bytes": 1000,
         "total_bytes": 2000}])))
    view = open_and_wait(qtbot, window, training_ckpt[0])
    weights = view.file.totals["memory"]["weights"]["saved"]
    assert weights > 1000
    text = view.summary.toPlainText()
    assert "Does not fit on any single device here (largest free: 1,000 B on cuda:0, " \
           "system memory: 100 B available)" in text


@POPUP
def test_a_failed_listing_removes_its_placeholder(qtbot, settings, monkeypatch):
    monkeypatch.setattr(devices_mod, "device_command",
                        lambda: [sys.executable, "-c", "import sys; sys.exit('no torch')"])
    win = probing_window(qtbot, settings)
    with qtbot.waitSignal(win.probe.failed, timeout=60_000):
        win.device_box.showPopup()
    win.device_box.hidePopup()
    assert win.device_box.findText(LISTING) < 0 and win.devices_error == "no torch"
    win.close()


def test_parse_devices():
    listed = parse_devices(json.dumps(FAKE))
    assert [d["free_bytes"] for d in listed] == [12 * GIB, 20 * GIB, 1024]
    old = parse_devices('[{"id": "cpu", "label": "cpu"}, {"id": "cuda:0", "free_bytes": -1,'
                        ' "total_bytes": "many"}]')  # an older child, or a strange one
    assert old[1] == {"id": "cuda:0", "label": "cuda:0", "free_bytes": None,
                      "total_bytes": None}
    for bad in ("", "{}", '[{"label": "x"}]', "[1]"):
        try:
            parse_devices(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
    assert device_label(old[1]) == "cuda:0"
    assert device_label(listed[0]) == "cpu · 12.0 GiB available"
