"""Light and dark: the Fusion style with an explicit palette, following the system's colour
scheme unless the user picks one, and named colours for everything drawn by hand.

Panels written as HTML, item models and plots ask :func:`color` (or :func:`brush`) for a
role ("danger", "muted", …) instead of writing a hex literal; the answer depends on the
application palette at the time, so content built after a switch is right, and widgets
re-render what they show when they get a ``QEvent.PaletteChange`` (see
:func:`is_palette_change`).

The theme is chosen once per application: ``system`` (the default), ``light`` or ``dark``,
kept in QSettings under ``theme``; the environment variable ``CKPT_INSPECTOR_THEME``
overrides the setting (screenshots, a quick look).
"""

from __future__ import annotations

import os
from functools import lru_cache

from PySide6.QtCore import QEvent, QObject, QSettings, Qt
from PySide6.QtGui import QBrush, QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory, QWidget

MODES = ("system", "light", "dark")
ENV = "CKPT_INSPECTOR_THEME"
SETTING = "theme"

# role -> (light, dark). Light values are the app's original colours (Tailwind-like greys,
# red 700, amber 700…); dark values are the lighter tints of the same hues, legible on the
# dark palette's #1d1f22 base.
COLORS: dict[str, tuple[str, str]] = {
    # text
    "heading": ("#374151", "#d1d5db"),
    "muted": ("#6b7280", "#9ca3af"),
    "faint": ("#9ca3af", "#7c8390"),
    "danger": ("#b91c1c", "#f87171"),
    "warning": ("#b45309", "#fbbf24"),
    "changed": ("#c2410c", "#fb923c"),
    "ok": ("#15803d", "#4ade80"),
    "accent": ("#2563eb", "#60a5fa"),
    "purple": ("#7e22ce", "#c084fc"),
    "nan": ("#c026d3", "#e879f9"),
    # banners and badges: text, background, border
    "danger_fg": ("#7f1d1d", "#fecaca"),
    "danger_bg": ("#fdecea", "#3f1a1c"),
    "danger_border": ("#f5c2c0", "#7f1d1d"),
    "warning_fg": ("#78350f", "#fde68a"),
    "warning_bg": ("#fff4e0", "#3a2c12"),
    "warning_border": ("#f6d7a7", "#78500f"),
    "ok_fg": ("#1b5e20", "#bbf7d0"),
    "ok_bg": ("#e8f5e9", "#15311f"),
    # boxes and plots
    "panel_bg": ("#f9fafb", "#25282c"),
    "panel_border": ("#e5e7eb", "#3b3f45"),
    "plot_bg": ("#ffffff", "#1d1f22"),
    "plot_fg": ("#374151", "#c9cdd4"),
    "plot_view_bg": ("#f3f4f6", "#2a2d31"),
    "plot_zero": ("#9ca3af", "#6b7280"),
    # the two ink colours of the toolbar icons (see icons.py)
    "icon": ("#374151", "#d7dade"),
}

# The dark palette: neutral greys, a blue highlight; disabled text dimmed.
DARK_PALETTE = {
    QPalette.ColorRole.Window: "#27292d",
    QPalette.ColorRole.WindowText: "#e6e7ea",
    QPalette.ColorRole.Base: "#1d1f22",
    QPalette.ColorRole.AlternateBase: "#24272b",
    QPalette.ColorRole.ToolTipBase: "#33363b",
    QPalette.ColorRole.ToolTipText: "#e6e7ea",
    QPalette.ColorRole.PlaceholderText: "#8b9099",
    QPalette.ColorRole.Text: "#e6e7ea",
    QPalette.ColorRole.Button: "#31343a",
    QPalette.ColorRole.ButtonText: "#e6e7ea",
    QPalette.ColorRole.BrightText: "#ff6b6b",
    QPalette.ColorRole.Light: "#44474e",
    QPalette.ColorRole.Midlight: "#393c42",
    QPalette.ColorRole.Mid: "#2b2e33",
    QPalette.ColorRole.Dark: "#18191c",
    QPalette.ColorRole.Shadow: "#0b0c0e",
    QPalette.ColorRole.Highlight: "#2f6fd6",
    QPalette.ColorRole.HighlightedText: "#ffffff",
    QPalette.ColorRole.Link: "#7aa8ff",
    QPalette.ColorRole.LinkVisited: "#b197fc",
}
DARK_DISABLED = {
    QPalette.ColorRole.WindowText: "#6f747c",
    QPalette.ColorRole.Text: "#6f747c",
    QPalette.ColorRole.ButtonText: "#6f747c",
    QPalette.ColorRole.Base: "#232529",
    QPalette.ColorRole.Button: "#2b2d31",
    QPalette.ColorRole.Highlight: "#3a3d44",
    QPalette.ColorRole.HighlightedText: "#9aa0a8",
}


# -- colours -------------------------------------------------------------------------------
def is_dark(palette: QPalette | None = None) -> bool:
    """Whether ``palette`` (by default the application's) is a dark one."""
    if palette is None:
        if QGuiApplication.instance() is None:
            return False
        palette = QGuiApplication.palette()
    return palette.color(QPalette.ColorRole.Window).lightness() < 128


def color(role: str, dark: bool | None = None) -> str:
    """The ``#rrggbb`` of a named role for the current palette (or the one asked for)."""
    light_value, dark_value = COLORS[role]
    return dark_value if (is_dark() if dark is None else dark) else light_value


def brush(role: str) -> QBrush:
    """A QBrush of :func:`color`, for item models' ``ForegroundRole``."""
    return _brush(color(role))


@lru_cache(maxsize=64)
def _brush(hex_color: str) -> QBrush:
    return QBrush(QColor(hex_color))


def span(role: str, html: str, bold: bool = False) -> str:
    """``html`` in the colour of ``role``, optionally bold."""
    inner = f"<b>{html}</b>" if bold else html
    return f"<span style='color:{color(role)}'>{inner}</span>"


def set_muted(widget: QWidget) -> None:
    """Draw a label's text in the palette's placeholder grey: it follows a theme switch
    without a style sheet."""
    widget.setForegroundRole(QPalette.ColorRole.PlaceholderText)


def is_palette_change(event: QEvent) -> bool:
    """Whether a widget's ``changeEvent`` is the one to re-render themed content on."""
    return event.type() == QEvent.Type.PaletteChange


# -- palettes ------------------------------------------------------------------------------
def light_palette() -> QPalette:
    palette = QStyleFactory.create("Fusion").standardPalette()
    palette.setColor(QPalette.ColorRole.Link, QColor("#1d4ed8"))
    palette.setColor(QPalette.ColorRole.PlaceholderText, QColor("#6b7280"))
    return palette


def dark_palette() -> QPalette:
    palette = QPalette()
    for role, value in DARK_PALETTE.items():
        palette.setColor(role, QColor(value))
    for role, value in DARK_DISABLED.items():
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(value))
    return palette


# -- choosing ------------------------------------------------------------------------------
def saved_mode(settings: QSettings) -> str:
    """The theme to start with: ``$CKPT_INSPECTOR_THEME``, else the setting, else system."""
    mode = os.environ.get(ENV) or str(settings.value(SETTING, "system"))
    return mode if mode in MODES else "system"


class ThemeController(QObject):
    """Applies a mode to the application and, in ``system`` mode, follows the platform's
    colour scheme as it changes. One per application: :func:`controller`."""

    def __init__(self, app: QApplication):
        super().__init__(app)
        self.app = app
        self.mode = "system"
        # what the platform gives before any palette is set: the fallback when it does not
        # say which colour scheme it uses (Qt.ColorScheme.Unknown)
        self._platform_dark = is_dark(app.palette())
        app.styleHints().colorSchemeChanged.connect(self._system_changed)

    def system_dark(self) -> bool:
        scheme = self.app.styleHints().colorScheme()
        if scheme == Qt.ColorScheme.Unknown:
            return self._platform_dark
        return scheme == Qt.ColorScheme.Dark

    def wants_dark(self) -> bool:
        return self.mode == "dark" or (self.mode == "system" and self.system_dark())

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"theme must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.apply()

    def apply(self) -> None:
        dark = self.wants_dark()
        if self.app.style().name().lower() != "fusion":
            self.app.setStyle("Fusion")
        palette = dark_palette() if dark else light_palette()
        if self.app.palette() != palette:
            self.app.setPalette(palette)  # widgets get QEvent.PaletteChange and re-render

    def _system_changed(self, _scheme: Qt.ColorScheme) -> None:
        if self.mode == "system":
            self.apply()


def controller() -> ThemeController:
    """The application's theme controller (a child of the application, made on first use)."""
    app = QApplication.instance()
    if app is None:
        raise RuntimeError("no QApplication")
    return app.findChild(ThemeController) or ThemeController(app)
