"""The summary panel's "torch.load" box: will ``torch.load(path, map_location="cpu")`` work,
what blocks it, and the fix with a link that copies it (the view handles the link)."""

from __future__ import annotations

from html import escape

from ckpt_inspector.core.torch_load_prediction import TorchLoadPrediction
from ckpt_inspector.gui.theme import color

COPY_FIX_URL = "ckpt-inspector:copy-torch-load-fix"  # the Copy link's href
SHOWN_NAMES = 12
SHOWN_FILES = 20


def _status(pred: TorchLoadPrediction) -> tuple[str, str, str]:
    """(text colour role, background role, the first line)."""
    if pred.dangerous:
        return "danger_fg", "danger_bg", "Do not load this file with torch."
    if pred.weights_only:
        return "ok_fg", "ok_bg", (f"{pred.works}: weights_only=True, the default since "
                                  "torch 2.6, accepts it.")
    if pred.fix:
        n = len(pred.blocked_by)
        them = "it" if n == 1 else f"these {n}"
        return "warning_fg", "warning_bg", (f"{pred.fails}: weights_only=True refuses "
                                            f"{them}. Allowing {them} (the code below) "
                                            "makes it load.")
    if pred.loader and not pred.blocked_by and not pred.files:
        return "heading", "panel_bg", f"Not a torch.load file: {pred.problem or ''}"
    return "warning_fg", "warning_bg", f"{pred.fails}: {pred.problem or ''}"


def torch_load_html(pred: TorchLoadPrediction) -> str:
    fg_role, bg_role, first = _status(pred)
    fg, bg = color(fg_role), color(bg_role)
    parts = ["<h3>torch.load</h3>",
             f'<table width="100%" cellspacing="0"><tr><td bgcolor="{bg}" '
             f'style="padding:6px;"><span style="color:{fg};">{escape(first)}</span>'
             "</td></tr></table>"]
    if pred.blocked_by and not pred.fix:  # a fix names them all
        names = pred.blocked_by
        more = f"<br>… and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else ""
        parts.append("<p>Globals its weights-only unpickler refuses:<br><span class='mono'>"
                     + "<br>".join(escape(n) for n in names[:SHOWN_NAMES]) + more
                     + "</span></p>")
    if pred.dangerous:
        parts.append("<p class='bad'>No fix is offered: allowing what it imports would let "
                     "its payload run.</p>")
    elif pred.problem and (pred.fix or pred.blocked_by):
        parts.append(f"<p>{escape(pred.problem)}</p>")
    if pred.fix:
        parts.append(f"<p>Run this before <span class='mono'>torch.load</span> "
                     f"(<a href='{COPY_FIX_URL}'>Copy</a>):</p>"
                     # pre-wrap: the panel is narrow; a long line wraps, indents stay
                     f"<p class='mono' style='white-space:pre-wrap'>"
                     f"{escape(pred.fix.rstrip())}</p>")
    if pred.loader:
        parts.append(f"<p>Read it with <span class='mono'>{escape(pred.loader)}</span></p>")
    parts.append(_files(pred))
    notes = [pred.note, pred.older_torch, pred.mmap]
    parts += [f"<p class='muted'>{escape(n)}</p>" for n in notes if n]
    return "".join(parts)


def _files(pred: TorchLoadPrediction) -> str:
    if not pred.files:
        return ""
    rows = "".join(
        f"<tr><td class='mono'>{escape(str(f['path']))}</td><td>"
        + ("loads" if f["weights_only"] else
           f"<span class='bad'>fails</span> <span class='muted'>{escape(_why(f))}</span>")
        + "</td></tr>"
        for f in pred.files[:SHOWN_FILES])
    more = (f"<p class='muted'>… {len(pred.files) - SHOWN_FILES:,} more</p>"
            if len(pred.files) > SHOWN_FILES else "")
    return f"<table>{rows}</table>{more}"


def _why(entry: dict) -> str:
    blocked = entry.get("blocked_by") or []
    if blocked:
        return f"({len(blocked)} refused)"
    return f"({entry['problem']})" if entry.get("problem") else ""
