"""The app as a desktop citizen, offscreen: icons and the desktop entry from the package,
settings kept between runs, standard shortcuts, Help › Keyboard shortcuts and About, and
the light and dark themes."""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings, QSize, Qt, qVersion
from PySide6.QtGui import QAction, QGuiApplication, QIcon, QImage, QKeySequence, QPalette
from PySide6.QtWidgets import QApplication

from ckpt_inspector import __version__
from ckpt_inspector.core.ops.histogram import Histogram
from ckpt_inspector.core.ops.stats import Stats
from ckpt_inspector.gui import app as app_mod
from ckpt_inspector.gui import icons, theme
from ckpt_inspector.gui.dialogs.help import shortcut_rows
from ckpt_inspector.gui.html.checkpoint import verdict_badge
from ckpt_inspector.gui.main_window import MainWindow
from ckpt_inspector.gui.tree.model import SHAPE

from support import ROOT, find_row, open_and_wait

STD = QKeySequence.StandardKey
NATIVE = QKeySequence.SequenceFormat.NativeText
TOOLBAR_ICONS = {"open", "demo", "compare", "export", "reload", "close-tab", "find", "copy",
                 "about", "shortcuts", "device", "quit", "files", "theme"}
FREEDESKTOP_MAIN_CATEGORIES = {"AudioVideo", "Audio", "Video", "Development", "Education",
                               "Game", "Graphics", "Network", "Office", "Science", "Settings",
                               "System", "Utility"}


@pytest.fixture(autouse=True)
def system_theme():
    """Every test starts and ends in the system theme (light, offscreen)."""
    yield
    theme.controller().set_mode("system")
    assert not theme.is_dark()


def opaque_pixels(image: QImage) -> list:
    image = image.convertToFormat(QImage.Format.Format_ARGB32)
    return [image.pixelColor(x, y) for y in range(image.height()) for x in range(image.width())
            if image.pixelColor(x, y).alpha() > 200]


def mean_lightness(icon: QIcon, mode: QIcon.Mode = QIcon.Mode.Normal) -> float:
    pixels = opaque_pixels(icon.pixmap(QSize(48, 48), mode).toImage())
    return sum(c.lightness() for c in pixels) / len(pixels)


def new_window(qtbot, path: Path) -> MainWindow:
    win = MainWindow(settings=QSettings(str(path), QSettings.Format.IniFormat),
                     probe_devices=False)
    qtbot.addWidget(win)
    win.show()
    return win


# -- resources -----------------------------------------------------------------------------
def test_icons_load_from_the_package_at_every_size(qtbot):
    assert set(icons.icon_names()) >= TOOLBAR_ICONS
    for name in icons.icon_names():
        icon = icons.icon(name)
        assert not icon.isNull(), name
        for size in (16, 24, 48):
            pix = icon.pixmap(QSize(size, size))
            assert not pix.isNull() and pix.size() == QSize(size, size), (name, size)
            assert opaque_pixels(pix.toImage()), f"{name} drew nothing at {size} px"
    # sharp on a high-DPI screen: drawn at the device's pixels, not scaled up
    pix = icons.icon("open").pixmap(QSize(24, 24), 2.0)
    assert pix.size() == QSize(48, 48) and pix.devicePixelRatio() == 2.0
    app_pix = icons.app_icon().pixmap(QSize(256, 256))
    assert not app_pix.isNull() and len(opaque_pixels(app_pix.toImage())) > 256 * 256 // 2


def test_resources_are_package_data_read_with_importlib_resources():
    """Everything in ckpt_inspector/resources is in pyproject's package-data globs (so a
    wheel has it), and is found through importlib.resources, not a path on disk."""
    import tomllib

    package = ROOT / "ckpt_inspector"
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())[
        "tool"]["setuptools"]["package-data"]["ckpt_inspector"]
    files = [p.relative_to(package).as_posix() for p in (package / "resources").rglob("*")
             if p.is_file()]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatchcase(f, p) and
                                           f.count("/") == p.count("/") for p in patterns)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"
    svg = icons.resource("icons/open.svg")
    assert svg.read_bytes().startswith(b"<svg")
    assert Path(str(svg)).resolve().is_relative_to(package.resolve())


def test_app_names_itself_for_the_desktop(qtbot):
    app = app_mod.make_app()
    assert QGuiApplication.desktopFileName() == app_mod.DESKTOP_ID == "ckpt-inspector"
    assert not app.windowIcon().isNull()
    assert icons.resource(f"{app_mod.DESKTOP_ID}.desktop").is_file()


def test_desktop_entry_and_mime_types():
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # keys are case-sensitive
    entry.read_string(icons.resource(icons.DESKTOP_FILE).read_text())
    d = entry["Desktop Entry"]
    assert d["Type"] == "Application"
    assert d["Exec"] == "ckpt-inspector %F"
    assert d["Icon"] == "ckpt-inspector" == Path(icons.APP_ICON).stem
    assert d["Terminal"] == "false"
    assert d["Name"] and d["GenericName"] and d["Comment"]
    categories = [c for c in d["Categories"].split(";") if c]
    assert categories[0] in FREEDESKTOP_MAIN_CATEGORIES
    # every MIME type the entry claims is defined in the shared-mime-info file, and the
    # extensions the app's Open dialog offers (but *.bin, *.pkl) are covered
    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    root = ET.fromstring(icons.resource(icons.MIME_FILE).read_bytes())
    globs = {t.get("type"): [g.get("pattern") for g in t.findall("m:glob", ns)]
             for t in root.findall("m:mime-type", ns)}
    claimed = [m for m in d["MimeType"].split(";") if m]
    assert set(claimed) == set(globs) and "application/x-pytorch-checkpoint" in claimed
    patterns = {p for ps in globs.values() for p in ps}
    for name in ("model.pt", "model.pth", "last.ckpt", "exported.pt2", "model.safetensors",
                 "model.onnx", "pytorch_model-00001-of-00002.bin"):
        assert any(fnmatch.fnmatchcase(name, p) for p in patterns), name
    assert not any(fnmatch.fnmatchcase("firmware.bin", p) for p in patterns)


@pytest.mark.skipif(not shutil.which("desktop-file-validate"), reason="desktop-file-utils")
def test_desktop_entry_validates(tmp_path):
    path = tmp_path / icons.DESKTOP_FILE
    path.write_bytes(icons.resource(icons.DESKTOP_FILE).read_bytes())
    proc = subprocess.run(["desktop-file-validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in proc.stdout


# -- settings ------------------------------------------------------------------------------
def test_settings_are_restored_in_the_next_window(qtbot, tmp_path, tensors_file,
                                                  training_ckpt):
    ini = tmp_path / "settings.ini"
    first = new_window(qtbot, ini)
    for path in (tensors_file[0], training_ckpt[0]):
        open_and_wait(qtbot, first, path)
    while first.tabs.count():  # the welcome page is narrower than a file's tab
        first.close_action.trigger()
    first.resize(700, 500)  # smaller than the offscreen screen (restoreGeometry fits it)
    qtbot.wait(50)  # the window has its size before the user drags the panel's edge
    dock = first.browser_dock
    first.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    first.resizeDocks([dock], [170], Qt.Orientation.Horizontal)  # not the 220 it starts at
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    first.browser.set_folder(str(folder))
    first._devices_found([{"id": "cpu", "label": "cpu"},
                          {"id": "cuda:1", "label": "cuda:1 — a GPU"}])
    first.device_box.setCurrentIndex(1)
    first.set_theme("dark")
    qtbot.waitUntil(lambda: abs(dock.width() - 170) <= 3, timeout=2000)
    first.close()
    theme.controller().set_mode("system")  # the next window must set it from the settings

    second = new_window(qtbot, ini)  # a new QSettings object on the same file
    assert (second.width(), second.height()) == (700, 500)
    assert second.dockWidgetArea(second.browser_dock) == Qt.DockWidgetArea.RightDockWidgetArea
    qtbot.waitUntil(lambda: abs(second.browser_dock.width() - dock.width()) <= 2, timeout=2000)
    assert second.recent_files() == [str(training_ckpt[0]), str(tensors_file[0])]
    recent = [a.text() for a in second.recent_menu.actions()]
    assert str(training_ckpt[0]) in recent
    assert second.browser.folder == str(folder)
    assert second.device == "cuda:1" and second.device_box.currentData() == "cuda:1"
    assert theme.controller().mode == "dark" and theme.is_dark()
    assert [a.data() for a in second.theme_actions.actions() if a.isChecked()] == ["dark"]
    second.close()


def test_reset_layout_puts_the_files_panel_back(qtbot, window):
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, window.browser_dock)
    window.browser_dock.close()
    window.reset_layout_action.trigger()
    assert window.dockWidgetArea(window.browser_dock) == Qt.DockWidgetArea.LeftDockWidgetArea
    assert window.browser_dock.isVisible()


# -- shortcuts -----------------------------------------------------------------------------
def test_standard_shortcuts(window):
    expected = {window.open_action: STD.Open, window.close_action: STD.Close,
                window.quit_action: STD.Quit, window.find_action: STD.Find,
                window.copy_action: STD.Copy, window.reload_action: STD.Refresh,
                window.next_tab_action: STD.NextChild,
                window.previous_tab_action: STD.PreviousChild,
                window.shortcuts_action: STD.HelpContents}
    for action, key in expected.items():
        keys = QKeySequence.keyBindings(key) or [QKeySequence("Ctrl+Q")]  # Quit, on Windows
        # written as people write them: Ctrl+Shift+Tab, not X11's Ctrl+Shift+Backtab
        keys = [QKeySequence(k.toString().replace("Shift+Backtab", "Shift+Tab")) for k in keys]
        assert action.shortcuts() == keys, action.text()
        assert action.shortcut().toString(NATIVE) in action.toolTip()
    # no key does two things: Qt would do neither, warning about an ambiguous shortcut
    seen: dict[str, str] = {}
    for action in window.findChildren(QAction):
        if action.shortcutContext() == Qt.ShortcutContext.WidgetShortcut:
            continue  # shown in the menu; the focused widget handles the key
        for key in action.shortcuts():
            text = key.toString()
            assert text not in seen, f"{text}: {seen[text]} and {action.text()}"
            seen[text] = action.text()


def test_shortcut_keys_work(qtbot, window, tensors_file):
    view = open_and_wait(qtbot, window, tensors_file[0])
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
    assert view.select_key("x")
    view.tree.setFocus()
    # Ctrl+C in the key tree copies the selected key (and nothing is ambiguous)
    QGuiApplication.clipboard().clear()
    qtbot.keySequence(view.tree, QKeySequence(STD.Copy))
    assert QGuiApplication.clipboard().text() == "x"
    qtbot.keySequence(view.tree, QKeySequence(STD.Find))
    qtbot.waitUntil(view.filter_edit.hasFocus, timeout=2000)
    qtbot.keySequence(view.filter_edit, QKeySequence(STD.Close))
    qtbot.waitUntil(lambda: window.tabs.count() == 0, timeout=2000)
    assert window.pages.currentWidget() is window.welcome


def test_previous_tab_reads_the_same_in_the_menu_and_the_dialog_and_works(qtbot, window,
                                                                          tensors_file,
                                                                          training_ckpt):
    action = window.previous_tab_action
    assert action in window.menuBar().actions()[2].menu().actions()  # View
    shown = action.shortcut().toString(NATIVE)  # what the menu writes beside it
    assert "Backtab" not in shown and shown.endswith("Shift+Tab")
    dialog = window.show_shortcuts()
    assert ("Previous tab", shown) in dialog.rows()
    dialog.close()
    open_and_wait(qtbot, window, tensors_file[0])
    open_and_wait(qtbot, window, training_ckpt[0])
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
    ctrl_shift = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    # X11 sends Ctrl+Shift+Tab as Backtab; other platforms as Tab: both go back one tab
    for key in (Qt.Key.Key_Backtab, Qt.Key.Key_Tab):
        before = window.tabs.currentIndex()
        qtbot.keyClick(window.tabs, key, ctrl_shift)
        assert window.tabs.currentIndex() == (before - 1) % 2, key


def test_keyboard_shortcuts_dialog_lists_the_actions(qtbot, window):
    dialog = window.show_shortcuts()  # deleted when closed
    rows = dialog.rows()
    for action, text in ((window.open_action, "Open…"), (window.close_action, "Close tab"),
                         (window.quit_action, "Quit"), (window.find_action, "Find…"),
                         (window.copy_action, "Copy keys"), (window.compare_action, "Compare…"),
                         (window.shortcuts_action, "Keyboard shortcuts")):
        keys = action.shortcut().toString(NATIVE)
        assert keys and (text, keys) in rows, (text, keys, rows)
    assert ("Open…", QKeySequence(STD.Open).toString(NATIVE)) in rows
    dialog.close()
    # made from the actions as they are: a new one shows up
    extra = window.menuBar().actions()[0].menu().addAction("Frobnicate")
    extra.setShortcut(QKeySequence("Ctrl+Alt+F"))
    assert ("File", "Frobnicate", QKeySequence("Ctrl+Alt+F").toString(NATIVE)) in \
        shortcut_rows(window.menuBar())
    dialog = window.show_shortcuts()
    assert ("Frobnicate", QKeySequence("Ctrl+Alt+F").toString(NATIVE)) in dialog.rows()
    dialog.close()


# -- about ---------------------------------------------------------------------------------
def test_about_names_versions_and_devices(qtbot, window):
    assert "listed when the Device picker is first opened" in window.about_text()
    window.probe.started = True  # as once the picker was opened (this window may not)
    assert "still being listed" in window.about_text()
    window._devices_failed("no torch here")
    assert "no torch here" in window.about_text()
    window._devices_found([{"id": "cpu", "label": "cpu"},
                           {"id": "cuda:0", "label": "cuda:0 — NVIDIA Test GPU"}])
    box = window.about()  # deleted when closed
    text = box.text()
    for part in (__version__, qVersion(), version("torch"), "cuda:0 — NVIDIA Test GPU",
                 window.settings.fileName()):
        assert part in text, part
    assert not box.iconPixmap().isNull()
    box.close()


def test_about_does_not_import_torch(tmp_path):
    """In a fresh GUI process: the window lists the devices when the picker is opened (a
    child process imports torch) and About shows torch's version, while torch stays out of
    the GUI process."""
    code = f"""
import json, sys
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication
from ckpt_inspector.gui.main_window import MainWindow
app = QApplication([])
win = MainWindow(QSettings({str(tmp_path / 's.ini')!r}, QSettings.Format.IniFormat))
def done(*_args):
    box = win.about()
    print(json.dumps({{"torch": "torch" in sys.modules, "text": box.text()}}))
    win.close()
    app.quit()
win.probe.found.connect(lambda _d: QTimer.singleShot(700, done))  # after the plots preload
win.probe.failed.connect(done)
win.show()
QTimer.singleShot(100, win.device_box.showPopup)  # as a click on the picker does
QTimer.singleShot(60_000, done)
app.exec()
"""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] is False, "the GUI process imported torch"
    assert version("torch") in result["text"] and "cpu" in result["text"]


# -- themes --------------------------------------------------------------------------------
def test_dark_theme_palette_and_colours(qtbot, window, training_ckpt):
    view = open_and_wait(qtbot, window, training_ckpt[0])
    assert not theme.is_dark()
    assert theme.color("danger") == theme.COLORS["danger"][0]
    light_summary = view.summary.toHtml()
    assert theme.COLORS["heading"][0] in light_summary
    window.set_theme("dark")
    app = QApplication.instance()
    assert app.style().name().lower() == "fusion"
    palette = app.palette()
    assert palette.color(QPalette.ColorRole.Window).lightness() < 80
    assert palette.color(QPalette.ColorRole.WindowText).lightness() > 200
    assert palette.color(QPalette.ColorRole.Base).lightness() < 80
    assert theme.is_dark()
    for role, (light, dark) in theme.COLORS.items():
        assert theme.color(role) == dark != light, role
    assert window.settings.value(theme.SETTING) == "dark"
    # what is on screen is drawn again in the dark colours (Qt posts the palette change)
    qtbot.waitUntil(lambda: theme.COLORS["heading"][1] in view.summary.toHtml(), timeout=2000)
    assert theme.COLORS["heading"][0] not in view.summary.toHtml()
    assert theme.COLORS["ok_bg"][1] in verdict_badge("safe")
    group = find_row(view, "model_state_dict").siblingAtColumn(SHAPE)  # "n items", muted
    assert group.data(Qt.ItemDataRole.ForegroundRole).color().name() == theme.COLORS["muted"][1]
    window.set_theme("light")
    assert not theme.is_dark()
    qtbot.waitUntil(lambda: theme.COLORS["heading"][0] in view.summary.toHtml(), timeout=2000)


def test_icons_follow_the_theme(qtbot, window):
    light = mean_lightness(icons.icon("copy"))
    window.set_theme("dark")
    dark = mean_lightness(icons.icon("copy"))
    assert dark > light + 60  # light strokes on the dark palette
    # disabled: all three inks in the palette's disabled text grey
    disabled = opaque_pixels(icons.icon("copy").pixmap(QSize(48, 48), QIcon.Mode.Disabled)
                             .toImage())
    grey = QApplication.palette().color(QPalette.ColorGroup.Disabled,
                                        QPalette.ColorRole.WindowText)
    assert all(abs(c.lightness() - grey.lightness()) <= 3 and c.saturation() < 30
               for c in disabled)


def test_plots_follow_the_theme(qtbot):
    from ckpt_inspector.gui.tensor.plots import HeatmapPanel, HistogramPanel

    hist, heat = HistogramPanel(), HeatmapPanel()
    for w in (hist, heat):
        qtbot.addWidget(w)

    def background() -> tuple[str, str]:
        return (hist.plot.backgroundBrush().color().name(),
                heat.canvas.backgroundBrush().color().name())

    light = theme.COLORS["plot_bg"][0]
    assert background() == (light, light)
    counts = np.array([1, 5, 2])
    hist.show_histogram(Histogram(np.linspace(-1, 1, 4), counts, nan=3),
                        Stats("float32", 11, "float"))
    assert theme.COLORS["danger"][0] in hist.note.text()  # "not shown: 3 NaN", in red
    theme.controller().set_mode("dark")
    dark = theme.COLORS["plot_bg"][1]
    qtbot.waitUntil(lambda: background() == (dark, dark), timeout=2000)
    axis = hist.plot.getAxis("bottom")
    assert axis.textPen().color().name() == theme.COLORS["plot_fg"][1]
    assert theme.COLORS["danger"][1] in hist.note.text() and "3 NaN" in hist.note.text()


def test_system_theme_follows_the_platform(qtbot, window, monkeypatch):
    ctl = theme.controller()
    assert ctl.mode == "system"
    # undone here, not at the test's end: the module's theme fixture checks the light
    # system theme after it, and an autouse fixture may hold monkeypatch open past it
    with monkeypatch.context() as patch:
        patch.setattr(ctl, "system_dark", lambda: True)
        ctl._system_changed(Qt.ColorScheme.Dark)  # what styleHints().colorSchemeChanged calls
        assert theme.is_dark()
        window.set_theme("light")  # a choice of the user's holds when the system changes
        ctl._system_changed(Qt.ColorScheme.Dark)
        assert not theme.is_dark()


def test_theme_from_the_environment(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv(theme.ENV, "dark")
    win = new_window(qtbot, tmp_path / "s.ini")
    assert theme.is_dark() and theme.controller().mode == "dark"
    win.close()
    with pytest.raises(ValueError):
        theme.controller().set_mode("purple")


# Hex colours belong to theme.py (and the badges' fixed colours): HTML and item models ask
# theme.color() for a role, so the dark theme can give another colour.
NOT_YET_THEMED: set[str] = set()


def test_no_hard_coded_text_colours():
    pattern = re.compile(r"color\s*:\s*#[0-9a-fA-F]{3,6}|QColor\(\"#")
    offenders = []
    for path in sorted((ROOT / "ckpt_inspector" / "gui").glob("*.py")):
        if path.name in {"theme.py", "icons.py", *NOT_YET_THEMED}:
            continue
        offenders += [f"{path.name}:{n}" for n, line in
                      enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders
