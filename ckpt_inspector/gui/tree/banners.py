"""The bars over the key tree: the verdict's (needs trust, dangerous), and for a checkpoint
made of several files some of which are missing or cannot be read: "1 of 6 files is missing:
model-00003-of-00006.safetensors; its 12 tensors cannot be read." (the summary's Warnings say
it too, far down)."""

from __future__ import annotations

from collections import Counter
from html import escape
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel

from ckpt_inspector.core.ops.session import LoadedFile
from ckpt_inspector.core.tree import Checkpoint
from ckpt_inspector.gui.theme import color

SHOWN = 4  # files named in the bar (then "and N more")


def tensors_per_file(ckpt: Checkpoint) -> Counter[str]:
    """How many tensors each file holds (a tensor in pieces counts for each of its files)."""
    held: Counter[str] = Counter()
    for node in ckpt.root.walk():
        t = node.tensor
        if t is None:
            continue
        files = {str(p.get("file")) for p in (t.pieces or []) if p.get("file")}
        files.update([t.file] if t.file else [])
        held.update(files)
    return held


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def problem_files_html(ckpt: Checkpoint) -> str:
    """The bar's text ("" when every file was read)."""
    bad: list[dict[str, Any]] = [f for f in ckpt.files if f.get("problem")]
    if not bad:
        return ""
    held = tensors_per_file(ckpt)
    total = len(set(held) | {str(f.get("path")) for f in bad})
    missing = all(f.get("problem") == "missing" for f in bad)
    if len(bad) == 1 and missing:
        named = f"<code>{escape(str(bad[0].get('path')))}</code>"
    else:
        named = ", ".join(
            f"<code>{escape(str(f.get('path')))}</code> ({escape(str(f.get('problem')))})"
            for f in bad[:SHOWN])
    if len(bad) > SHOWN:
        named += f" and {len(bad) - SHOWN:,} more"
    what = "is missing" if missing else "cannot be read"
    if len(bad) > 1:
        what = "are missing" if missing else "are missing or cannot be read"
    lost = sum(held.get(str(f.get("path")), 0) for f in bad)
    whose = "its" if len(bad) == 1 else "their"
    tail = (f"{whose} {_plural(lost, 'tensor')} cannot be read (shown damaged)" if lost
            else f"what {'it' if len(bad) == 1 else 'they'} held is not shown")
    return (f"<b>{len(bad):,} of {_plural(total, 'file')} {what}:</b> {named}; {tail}. "
            "The rest of the checkpoint is shown.")


def make_files_banner() -> QLabel:
    label = QLabel()
    label.setObjectName("filesBanner")
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.hide()
    return label


def show_files_banner(label: QLabel, ckpt: Checkpoint) -> None:
    """Show the bar for ``ckpt`` (in the verdict banner's warning colours), or hide it."""
    text = problem_files_html(ckpt)
    if not text:
        label.hide()
        return
    paint(label, "warning", text)


def paint(label: QLabel, kind: str, text: str) -> None:
    """Show ``text`` in a bar of the theme's ``kind`` colours (warning, danger)."""
    style = (f"background:{color(kind + '_bg')}; color:{color(kind + '_fg')}; "
             f"border:1px solid {color(kind + '_border')};")
    label.setStyleSheet(f"QLabel#{label.objectName()} {{ {style} padding:8px; "
                        "border-radius:4px; }")
    label.setText(text)
    label.show()


def show_verdict_banner(banner: QLabel, file: LoadedFile) -> None:
    """The bar that says a file needs trust or is dangerous (hidden for a safe one)."""
    report = file.report
    if report.verdict == "safe":
        banner.hide()
        return
    names = report.flagged_names()
    shown = ", ".join(f"<code>{escape(n)}</code>" for n in names[:6])
    more = f" and {len(names) - 6} more" if len(names) > 6 else ""
    if report.verdict == "dangerous":
        first = next(f for f in report.findings if f.severity == "dangerous")
        where = f" (byte {first.offset} of {escape(first.member or 'the file')})" \
            if first.offset is not None else ""
        text = (f"<b>Dangerous file.</b> {escape(first.message)}{where}. "
                "It is shown read-only; ckpt-inspector has not run any of it. "
                "Do not load it with torch.")
        kind = "danger"
    else:
        what = f"It imports {shown}{more}" if names else "It contains code"
        extra = f" {escape(file.ckpt.runs_code)}." if file.ckpt.runs_code else ""
        text = (f"<b>Needs trust.</b> {what}: loading it with torch would run that code."
                f"{extra} ckpt-inspector only reads it, read-only.")
        kind = "warning"
    paint(banner, kind, text)
