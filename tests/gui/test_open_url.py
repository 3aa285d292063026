"""The window over a URL: File > Open URL (recent URLs, kept without credentials), a URL
dropped on the window, the transfer counts in the status bar and the summary, a 404 on the
tab's message page, and the local-path parts of the window left alone."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from ckpt_inspector.core.summary import human_bytes
from ckpt_inspector.gui import settings as settings_mod
from ckpt_inspector.gui.dropping import drop_urls
from ckpt_inspector.gui.main_window import MainWindow
from ckpt_inspector.gui.remote import name_of, strip_credentials, transfer_text

from rangeserver import RangeServer

NAME = "org/model.safetensors"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Nothing here may reach another address than 127.0.0.1."""
    real = socket.socket.connect

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"a test tried to reach {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(scope="module")
def safetensors_bytes():
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    return save({"encoder.layer.0.weight": rng.standard_normal((64, 32), dtype=np.float32),
                 "encoder.layer.0.bias": np.zeros(64, np.float32),
                 "head.weight": rng.standard_normal((10, 64), dtype=np.float32)})


@pytest.fixture()
def server(safetensors_bytes):
    with RangeServer({NAME: safetensors_bytes}) as srv:
        yield srv


def open_url(qtbot, window: MainWindow, url: str):
    """File > Open URL with ``url`` typed, then Open; the tab once its tree is shown."""
    dialog = window.open_url_dialog()
    dialog.set_url(url)
    with qtbot.waitSignal(window.file_shown, timeout=60_000):
        dialog.accept()
    qtbot.waitUntil(lambda: not window.runner.tasks, timeout=10_000)
    return window.current_view()


def test_open_url_dialog_shows_the_tree(qtbot, window, server):
    url = server.url(NAME)
    assert window.open_url_action.shortcut().toString() == "Ctrl+L"
    view = open_url(qtbot, window, url)
    assert view.path == url
    assert window.tabs.tabText(0) == "model.safetensors"
    assert window.tabs.tabToolTip(0).startswith(url)
    assert view.model().node(view.proxy.mapToSource(view.proxy.index(0, 0))).key
    assert view.select_key("head.weight")
    assert "model.safetensors" in window.windowTitle()
    summary = view.summary.toPlainText().replace("\u200b", "")
    assert "127.0.0.1" in summary and "request" in summary
    assert "remote" not in summary.split("File metadata")[-1]  # shown once, not as metadata
    # nothing local was asked of a URL: no "whole model" bar, no file selected in the dock
    assert window.browser.view.selectionModel().selectedIndexes() == []
    assert window.export_action.isEnabled() and not window.torch_action.isEnabled()
    window.open_paths([url])  # the same URL again: its tab, not a second one
    assert window.tabs.count() == 1


def test_status_bar_counts_requests_and_bytes(qtbot, window, server, safetensors_bytes):
    view = open_url(qtbot, window, server.url(NAME))
    counts = view.file.ckpt.metadata["remote"]
    assert counts["size"] == len(safetensors_bytes)
    assert 1 <= counts["requests"] <= 2
    n = counts["requests"]
    expected = (f"read {human_bytes(counts['bytes'])} in {n} request{'s' if n != 1 else ''} "
                f"of {human_bytes(len(safetensors_bytes))}")
    assert transfer_text(view.file.ckpt) == expected
    assert window.file_label.text().endswith(f" · {expected}")
    assert transfer_text(object()) == ""  # a local checkpoint says nothing of requests


def test_recent_urls_persist_without_credentials(qtbot, window, server, settings):
    url = server.url(NAME)
    secret = url.replace("http://", "http://alice:s3cret@")
    view = open_url(qtbot, window, secret)
    assert view.file is not None
    assert "s3cret" not in window.tabs.tabToolTip(0)
    assert "s3cret" not in view.summary.toPlainText().replace("\u200b", "")
    settings.sync()
    with open(settings.fileName(), encoding="utf-8") as f:
        assert "s3cret" not in f.read() and "alice" not in f.read()
    assert settings_mod.recent_urls(settings) == [url]
    # local recent files are untouched, and the Files dock's folder is not a URL's
    assert settings_mod.recent_files(settings) == []
    assert "http" not in str(settings.value(settings_mod.LAST_FOLDER, ""))
    window._refresh_recent()
    assert url in [a.text() for a in window.recent_menu.actions()]
    # a new window offers it first in the dialog
    other = MainWindow(settings=settings, probe_devices=False)
    qtbot.addWidget(other)
    dialog = other.open_url_dialog()
    assert dialog.url() == url
    assert dialog.box.itemText(0) == url
    dialog.reject()
    other.close()


def test_recent_urls_most_recent_first_and_bounded(settings):
    for i in range(15):
        settings_mod.remember_url(settings, f"https://u:p@example.org/m{i}.safetensors")
    urls = settings_mod.recent_urls(settings)
    assert len(urls) == settings_mod.MAX_RECENT
    assert urls[0] == "https://example.org/m14.safetensors"
    assert not any("u:p" in u for u in urls)
    settings_mod.remember_url(settings, "https://example.org/m10.safetensors")
    assert settings_mod.recent_urls(settings)[0] == "https://example.org/m10.safetensors"
    assert len(settings_mod.recent_urls(settings)) == settings_mod.MAX_RECENT


def test_dialog_needs_a_url(qtbot, window):
    dialog = window.open_url_dialog()
    dialog.set_url("not a url")
    assert not dialog.buttons.button(dialog.buttons.StandardButton.Open).isEnabled()
    dialog.set_url("https://example.org/x.safetensors")
    assert dialog.buttons.button(dialog.buttons.StandardButton.Open).isEnabled()
    dialog.reject()


def send_drop(window, mime: QMimeData) -> bool:
    enter = QDragEnterEvent(QPoint(50, 50), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    if not enter.isAccepted():
        return False
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, event)
    return True


@pytest.mark.parametrize("as_text", [True, False], ids=["text", "qurl"])
def test_dropped_url_opens(qtbot, window, server, as_text):
    url = server.url(NAME)
    mime = QMimeData()
    if as_text:
        mime.setText(f"  {url}\n")
    else:
        mime.setUrls(drop_urls([url]))
    with qtbot.waitSignal(window.file_shown, timeout=60_000):
        assert send_drop(window, mime)
    qtbot.waitUntil(lambda: not window.runner.tasks, timeout=10_000)
    assert window.current_view().path == url
    assert window.tabs.tabText(0) == "model.safetensors"


def test_dropped_plain_text_is_ignored(window):
    mime = QMimeData()
    mime.setText("hello world")
    assert not send_drop(window, mime)
    assert window.tabs.count() == 0


def test_a_local_drop_still_opens(qtbot, window, tmp_path, safetensors_bytes):
    path = tmp_path / "local.safetensors"
    path.write_bytes(safetensors_bytes)
    mime = QMimeData()
    mime.setUrls(drop_urls([str(path)]))
    with qtbot.waitSignal(window.file_shown, timeout=60_000):
        assert send_drop(window, mime)
    qtbot.waitUntil(lambda: not window.runner.tasks, timeout=10_000)
    assert window.current_view().path == str(path)
    assert "request" not in window.file_label.text()


def test_404_shows_the_error_page_with_retry(qtbot, window, server, safetensors_bytes):
    url = server.url("org/missing.safetensors")
    [view] = window.open_paths([url])
    qtbot.waitUntil(lambda: view.retry_button.isVisible(), timeout=30_000)
    text = view.status.text()
    assert "Could not read" in text and "missing.safetensors" in text and "404" in text
    assert "Traceback" not in text
    assert "could not be read" in window.tabs.tabToolTip(0)
    box = window.reporter.last
    assert box is not None and "404" in box.text()
    box.close()
    assert settings_mod.recent_urls(window.settings) == []  # a failed URL is not recent
    # Retry reads it again: here the file has appeared meanwhile
    server.put("org/missing.safetensors", safetensors_bytes)
    with qtbot.waitSignal(window.file_shown, timeout=60_000):
        view.retry_button.click()
    qtbot.waitUntil(lambda: not window.runner.tasks, timeout=10_000)
    assert view.file is not None


@pytest.mark.parametrize("status", [403])
def test_refused_url_says_so(qtbot, window, server, status):
    server.fail_first = {NAME: [status] * 10}
    [view] = window.open_paths([server.url(NAME)])
    qtbot.waitUntil(lambda: view.retry_button.isVisible(), timeout=30_000)
    assert str(status) in view.status.text() or "credential" in view.status.text()
    window.reporter.last.close()


def test_no_ranges_says_so(qtbot, window, server):
    """A server that sends the whole of a large file instead of a range is refused (a
    small one is simply read whole)."""
    from safetensors.numpy import save

    server.put("big.safetensors", save({"w": np.zeros((512, 512), np.float32)}))  # 1 MiB
    server.ignore_range = True
    [view] = window.open_paths([server.url("big.safetensors")])
    qtbot.waitUntil(lambda: view.retry_button.isVisible(), timeout=30_000)
    assert "range" in view.status.text()
    window.reporter.last.close()


def test_export_of_a_url_proposes_a_local_folder(qtbot, window, server, tmp_path, settings):
    settings.setValue(settings_mod.LAST_EXPORT_FOLDER, str(tmp_path))
    open_url(qtbot, window, server.url(NAME))
    dialog = window.export_current()
    out = dialog.options.output_edit.text()
    assert out.startswith(str(tmp_path)) and "model" in out and "http" not in out
    assert dialog._output_problem(out) == ""
    assert "model.safetensors" in dialog.windowTitle()
    dialog.reject()


def test_tensor_npy_default_is_local(qtbot, window, server):
    view = open_url(qtbot, window, server.url(NAME))
    assert view.select_key("head.weight")
    qtbot.waitUntil(lambda: view.tensor_view.info is not None, timeout=10_000)
    asked = []
    view.tensor_view.save_npy_dialog(lambda *a: (asked.append(a[2]), ("", ""))[1])
    assert asked and "http" not in asked[0] and asked[0].endswith("head.weight.npy")


def test_names_and_credentials():
    assert name_of("https://h.org/a/b%20c.safetensors?x=1") == "b c.safetensors"
    assert name_of("s3://bucket/key/model.bin") == "model.bin"
    assert name_of("https://h.org/") == "h.org"
    assert strip_credentials("https://u:p@h.org:8080/x") == "https://h.org:8080/x"
    assert strip_credentials("https://h.org/x") == "https://h.org/x"
