"""The window on a light install: what needs torch runs in a child process that cannot
import it, and the dialog says what to install (not a traceback)."""

from __future__ import annotations

from support import open_and_wait, torch_blocker


def test_load_without_torch_says_what_to_install(qtbot, window, tensors_file, tmp_path,
                                                  monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(torch_blocker(tmp_path / "blocker")))
    open_and_wait(qtbot, window, tensors_file[0])
    window.load_current_with_torch()
    qtbot.waitUntil(lambda: window.reporter.last is not None, timeout=120_000)
    box = window.reporter.last
    assert box.windowTitle() == "Not loaded", box.windowTitle()
    assert "pip install 'ckpt-inspector[torch]'" in box.text() + box.informativeText(), \
        box.text()
    assert "Traceback" not in box.text() + box.informativeText()
    box.close()
