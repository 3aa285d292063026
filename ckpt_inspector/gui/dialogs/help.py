"""The Help menu's dialogs: Keyboard shortcuts, listed from the window's own actions (so
the list cannot go stale), and About, with the versions a bug report needs.

torch's version comes from its installed metadata, not from importing it: importing torch
takes seconds and would freeze the window (the device list comes from a child process,
see devices.py).
"""

from __future__ import annotations

import platform
from html import escape
from importlib.metadata import PackageNotFoundError, version

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QMenu,
    QMenuBar,
    QMessageBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ckpt_inspector import __version__
from ckpt_inspector.gui.icons import app_icon
from ckpt_inspector.gui.theme import span

NATIVE = QKeySequence.SequenceFormat.NativeText


def plain(text: str) -> str:
    """A menu text without its mnemonic: ``"&Open…"`` -> ``"Open…"`` (``&&`` is an ``&``)."""
    return text.replace("&&", "\0").replace("&", "").replace("\0", "&")


def shortcut_text(action: QAction) -> str:
    """An action's main shortcut as the platform writes it (``Ctrl+O``); the others a
    standard key brings (the keyboard's own Open key, F16…) are left out."""
    # Shift+Tab arrives as Shift+Backtab, and Qt writes it so
    return action.shortcut().toString(NATIVE).replace("Backtab", "Tab")


def shortcut_rows(menu_bar: QMenuBar) -> list[tuple[str, str, str]]:
    """``(menu, action, shortcuts)`` for every action in the menus that has a shortcut, in
    menu order; a submenu's actions are under ``"View › Theme"``."""
    rows: list[tuple[str, str, str]] = []

    def walk(menu: QMenu, where: str) -> None:
        for action in menu.actions():
            if action.isSeparator():
                continue
            sub = action.menu()
            if sub is not None:
                walk(sub, f"{where} › {plain(action.text())}")
            elif not action.shortcut().isEmpty():
                rows.append((where, plain(action.text()), shortcut_text(action)))

    for top in menu_bar.actions():
        if top.menu() is not None:
            walk(top.menu(), plain(top.text()))
    return rows


COPY_NOTE = ("{copy} copies what the focused part of the window holds: the selected keys in "
             "a key tree, the selected cells in a Values table, the selected text in a panel. "
             "Edit › Copy keys copies the current tab's selected keys.")


class ShortcutsDialog(QDialog):
    """Help › Keyboard shortcuts."""

    def __init__(self, menu_bar: QMenuBar, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        self.setObjectName("shortcutsDialog")
        self.tree = QTreeWidget()
        self.tree.setObjectName("shortcutsList")
        self.tree.setHeaderLabels(["Action", "Shortcut"])
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.setSelectionMode(QTreeWidget.SelectionMode.NoSelection)
        self.tree.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # a list to read, nothing to pick
        groups: dict[str, QTreeWidgetItem] = {}
        for where, text, keys in shortcut_rows(menu_bar):
            group = groups.get(where)
            if group is None:
                group = groups[where] = QTreeWidgetItem(self.tree, [where])
                font = group.font(0)
                font.setBold(True)
                group.setFont(0, font)
                group.setFirstColumnSpanned(True)
                group.setFlags(Qt.ItemFlag.ItemIsEnabled)
            QTreeWidgetItem(group, [text, keys])
        self.tree.expandAll()
        self.tree.resizeColumnToContents(0)
        self.tree.setColumnWidth(0, self.tree.columnWidth(0) + 40)
        lines = len(groups) + sum(g.childCount() for g in groups.values()) + 1
        self.tree.setMinimumHeight(self.tree.sizeHintForRow(0) * lines + 8)
        note = QLabel(COPY_NOTE.format(
            copy=QKeySequence(QKeySequence.StandardKey.Copy).toString(NATIVE)))
        note.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tree, 1)
        layout.addWidget(note)
        layout.addWidget(buttons)
        self.resize(460, self.sizeHint().height())

    def rows(self) -> list[tuple[str, str]]:
        """``(action, shortcut)`` as listed, for tests."""
        out = []
        for g in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(g)
            out += [(group.child(i).text(0), group.child(i).text(1))
                    for i in range(group.childCount())]
        return out


def package_version(name: str) -> str:
    """An installed distribution's version from its metadata (nothing is imported)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def versions() -> list[tuple[str, str]]:
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import qVersion

    return [("Python", platform.python_version()), ("Qt", qVersion()),
            ("PySide6", pyside_version), ("torch", package_version("torch")),
            ("torchvision", package_version("torchvision")),
            ("numpy", package_version("numpy")), ("pyqtgraph", package_version("pyqtgraph"))]


def about_html(devices: list[str] | None, device: str, probe_error: str = "",
               settings_file: str = "", asked: bool = True) -> str:
    """The About text: what the app is, the versions, and the devices torch offers here
    (``None`` while the child process that lists them is still running, or, ``asked``
    False, before the device picker was first opened)."""
    if devices:
        found = "<br>".join(escape(d) for d in devices)
    elif probe_error:
        found = span("muted", f"not found ({escape(probe_error)}); cpu is used")
    elif not asked:
        found = span("muted", "listed when the Device picker is first opened")
    else:
        found = span("muted", "still being listed…")
    pairs = [*versions(), ("System", platform.platform(terse=True))]
    if settings_file:
        pairs.append(("Settings", settings_file))
    rows = "".join(f"<tr><td style='padding-right:14px'>{escape(k)}</td><td>{escape(v)}</td>"
                   "</tr>" for k, v in pairs)
    return (f"<h3>ckpt-inspector {escape(__version__)}</h3>"
            "<p>See what is inside a PyTorch checkpoint — without running its code.</p>"
            f"<table>{rows}</table>"
            f"<p><b>Devices</b> (torch, listed by a child process)<br>{found}<br>"
            f"Selected: {escape(device)}</p>"
            "<p>MIT licence. Icons drawn for ckpt-inspector.</p>")


def about_box(parent: QWidget, html: str) -> QMessageBox:
    box = QMessageBox(parent)
    box.setObjectName("aboutBox")
    box.setWindowTitle("About ckpt-inspector")
    box.setIconPixmap(app_icon().pixmap(QSize(64, 64), parent.devicePixelRatioF()))
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(html)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    box.setStandardButtons(QMessageBox.StandardButton.Close)
    return box
