"""Icons: the app's SVG icons, read from the package with importlib.resources and drawn
at whatever size and pixel ratio they are shown (sharp on high-DPI screens), in the
current theme's colours; and small round badges drawn in code.

The toolbar icons in ``resources/icons/`` are drawn with three inks: ``#374151`` (the
outline), ``#2563eb`` (an accent) and ``#b91c1c`` (danger). Each is replaced with the
matching :mod:`theme` colour when the icon is painted, and all three with the palette's
disabled text colour for a disabled action, so one file serves light and dark.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from typing import TYPE_CHECKING

from PySide6.QtCore import QByteArray, QRect, QRectF, QSize, Qt
from PySide6.QtGui import (
    QColor,
    QFont,
    QGuiApplication,
    QIcon,
    QIconEngine,
    QImage,
    QPainter,
    QPalette,
    QPixmap,
)
from PySide6.QtSvg import QSvgRenderer

from ckpt_inspector.gui import theme

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

APP_ICON = "ckpt-inspector.svg"
DESKTOP_FILE = "ckpt-inspector.desktop"
MIME_FILE = "ckpt-inspector.xml"
INKS = {"#374151": "icon", "#2563eb": "accent", "#b91c1c": "danger"}  # colour in file -> role


def resource(name: str) -> Traversable:
    """A file under ``ckpt_inspector/resources`` (``"icons/open.svg"``), wherever the package
    is: a wheel, an editable install or a PyInstaller bundle."""
    node = files("ckpt_inspector") / "resources"
    for part in name.split("/"):
        node = node / part
    return node


def icon_names() -> list[str]:
    """The names of the toolbar icons, for :func:`icon`."""
    return sorted(f.name.removesuffix(".svg") for f in resource("icons").iterdir()
                  if f.name.endswith(".svg"))


class SvgIconEngine(QIconEngine):
    """Renders SVG text at the size asked for; ``themed`` icons are recoloured from the
    palette each time (so a theme switch needs no reload)."""

    def __init__(self, svg: bytes, themed: bool):
        super().__init__()
        self.svg = svg
        self.themed = themed
        self._cache: dict[tuple, QPixmap] = {}

    def _inks(self, mode: QIcon.Mode) -> tuple[str, ...]:
        if not self.themed:
            return ()
        if mode == QIcon.Mode.Disabled:
            grey = QGuiApplication.palette().color(QPalette.ColorGroup.Disabled,
                                                   QPalette.ColorRole.WindowText).name()
            return tuple(grey for _ in INKS)
        return tuple(theme.color(role) for role in INKS.values())

    def _renderer(self, inks: tuple[str, ...]) -> QSvgRenderer:
        text = self.svg.decode()
        for old, new in zip(INKS, inks):
            text = text.replace(old, new)
        return QSvgRenderer(QByteArray(text.encode()))

    def paint(self, painter: QPainter, rect: QRect, mode: QIcon.Mode,
              state: QIcon.State) -> None:
        self._renderer(self._inks(mode)).render(painter, QRectF(rect))

    def pixmap(self, size: QSize, mode: QIcon.Mode, state: QIcon.State) -> QPixmap:
        inks = self._inks(mode)
        key = (size.width(), size.height(), inks)
        pix = self._cache.get(key)
        if pix is None:
            image = QImage(size, QImage.Format.Format_ARGB32_Premultiplied)
            image.fill(Qt.GlobalColor.transparent)
            if not size.isEmpty():
                painter = QPainter(image)
                self._renderer(inks).render(painter, QRectF(image.rect()))
                painter.end()
            pix = self._cache[key] = QPixmap.fromImage(image)
        return pix

    def actualSize(self, size: QSize, mode: QIcon.Mode, state: QIcon.State) -> QSize:
        return size

    def isNull(self) -> bool:
        return not self.svg

    def clone(self) -> QIconEngine:
        return SvgIconEngine(self.svg, self.themed)

    def key(self) -> str:
        return "ckpt-inspector-svg"


@lru_cache(maxsize=64)
def icon(name: str) -> QIcon:
    """A toolbar icon by name (``"open"``), in the theme's colours."""
    return QIcon(SvgIconEngine(resource(f"icons/{name}.svg").read_bytes(), themed=True))


@lru_cache(maxsize=1)
def app_icon() -> QIcon:
    """The application's icon, in its own colours."""
    return QIcon(SvgIconEngine(resource(APP_ICON).read_bytes(), themed=False))


@lru_cache(maxsize=64)
def badge_icon(color: str, mark: str) -> QIcon:
    """A disc of ``color`` with ``mark`` (one or two characters) in bold white, at 16 and
    32 pixels."""
    icon = QIcon()
    for size in (16, 32):
        pix = QPixmap(size, size)
        pix.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pix)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setBrush(QColor(color))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.drawEllipse(1, 1, size - 2, size - 2)
        painter.setPen(QColor("white"))
        font = QFont()
        font.setBold(True)
        font.setPixelSize(int(size * (0.75 if len(mark) == 1 else 0.55)))
        painter.setFont(font)
        painter.drawText(pix.rect(), Qt.AlignmentFlag.AlignCenter, mark)
        painter.end()
        icon.addPixmap(pix)
    return icon


VERDICT_WORDS = {"safe": "safe", "needs-trust": "needs trust", "dangerous": "dangerous",
                 "unreadable": "could not be read"}


def verdict_icon(verdict: str) -> QIcon:
    """A small badge for a tab: amber "!" for needs-trust, red "!" for dangerous, grey "?"
    for unreadable; nothing for safe (the close button keeps its own cross)."""
    colors = {"needs-trust": "#d97706", "dangerous": "#c62828", "unreadable": "#6b7280"}
    if verdict not in colors:
        return QIcon()
    return badge_icon(colors[verdict], "?" if verdict == "unreadable" else "!")
