"""Small round badges drawn in code (no image files): a coloured disc with a white mark."""

from __future__ import annotations

from functools import lru_cache

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPixmap


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
