"""The empty window: what to do first."""

from __future__ import annotations

import os
from html import escape

from PySide6.QtCore import QEvent, QSize, Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ckpt_inspector.gui.icons import app_icon, icon
from ckpt_inspector.gui.theme import color, is_palette_change, set_muted


class WelcomePage(QWidget):
    open_requested = Signal()
    demo_requested = Signal()
    recent_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("welcomePage")
        self._recent: list[str] = []
        logo = QLabel()
        logo.setObjectName("welcomeLogo")
        logo.setPixmap(app_icon().pixmap(QSize(96, 96), self.devicePixelRatioF()))
        logo.setAlignment(Qt.AlignmentFlag.AlignCenter)
        title = QLabel("<span style='font-size:20pt; font-weight:600;'>ckpt-inspector</span>")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        subtitle = QLabel("See what is inside a PyTorch checkpoint — without running its code.")
        subtitle.setAlignment(Qt.AlignmentFlag.AlignCenter)
        font = subtitle.font()
        font.setPointSizeF(font.pointSizeF() * 1.1)
        subtitle.setFont(font)
        set_muted(subtitle)
        self.open_button = QPushButton("Open…")
        self.open_button.setObjectName("welcomeOpen")
        self.demo_button = QPushButton("Open demo checkpoint")
        self.demo_button.setObjectName("welcomeDemo")
        self.demo_button.setToolTip("A resnet18 training checkpoint with optimizer state, "
                                    "made on this machine the first time (no download)")
        self.open_button.setIcon(icon("open"))
        self.demo_button.setIcon(icon("demo"))
        for b in (self.open_button, self.demo_button):
            b.setMinimumSize(200, 40)
            b.setIconSize(QSize(20, 20))
        self.open_button.setDefault(True)
        self.open_button.clicked.connect(self.open_requested)
        self.demo_button.clicked.connect(self.demo_requested)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.open_button)
        buttons.addSpacing(12)
        buttons.addWidget(self.demo_button)
        buttons.addStretch(1)
        hint = QLabel(".pt  .pth  .ckpt  .bin  .pkl  .onnx  .safetensors — or drop files here")
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        set_muted(hint)
        self.recent = QLabel()
        self.recent.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.recent.setOpenExternalLinks(False)
        self.recent.linkActivated.connect(self.recent_requested)
        layout = QVBoxLayout(self)
        layout.addStretch(2)
        layout.addWidget(logo)
        layout.addSpacing(8)
        layout.addWidget(title)
        layout.addWidget(subtitle)
        layout.addSpacing(24)
        layout.addLayout(buttons)
        layout.addSpacing(12)
        layout.addWidget(hint)
        layout.addSpacing(24)
        layout.addWidget(self.recent)
        layout.addStretch(3)

    def changeEvent(self, event: QEvent) -> None:
        super().changeEvent(event)
        if is_palette_change(event):
            self.set_recent(self._recent)

    def set_recent(self, paths: list[str]) -> None:
        self._recent = paths
        if not paths:
            self.recent.setText("")
            return
        faint = color("faint")
        rows = "".join(
            f"<tr><td style='padding:2px 16px 2px 0'><a href='{escape(p)}'>"
            f"{escape(os.path.basename(p))}</a></td>"
            f"<td style='color:{faint}'>{escape(os.path.dirname(p))}</td></tr>"
            for p in paths[:8])
        self.recent.setText(f"<b>Recent</b><table align='center' style='margin-top:6px'>{rows}"
                            "</table>")
