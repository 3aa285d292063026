"""Rich text of a check: the header (the checkpoint, the model, whether strict loading
succeeds, counts by status, notes) and the selected key (both sides, what its status
means), in the comparison tab's colours."""

from __future__ import annotations

from html import escape

from ckpt_inspector.core.ops.check.report import (
    DTYPE,
    ERROR,
    FILLED,
    IGNORED,
    MISMATCHED,
    MISSING,
    OK,
    SEVERITY,
    STATUS_HELP,
    UNEXPECTED,
    CheckReport,
)
from ckpt_inspector.core.ops.check.rows import CheckNode, status_text
from ckpt_inspector.gui.html.checkpoint import breakable, css
from ckpt_inspector.gui.theme import color, span

# text colour (a theme role), badge colour, badge mark: the comparison's where they mean
# the same (a key on one side only, a shape changed, a dtype changed)
STATUS_STYLE = {
    OK: ("muted", "#9ca3af", "="),
    DTYPE: ("warning", "#eab308", "T"),
    MISSING: ("purple", "#9333ea", "−"),
    UNEXPECTED: ("accent", "#2563eb", "+"),
    MISMATCHED: ("danger", "#dc2626", "≠"),
    ERROR: ("danger_fg", "#7f1d1d", "!"),
    FILLED: ("muted", "#9ca3af", "0"),
    IGNORED: ("faint", "#d1d5db", "·"),
}
KIND_WORDS = {"arch": "torchvision", "builder": "your builder", "checkpoint": "a checkpoint"}


def status_color(status: str) -> str:
    return color(STATUS_STYLE[status][0])


def target_text(report: CheckReport) -> str:
    t = report.target
    extra = f", {t['class']}" if t.get("class") else ""
    return (f"{t.get('name', '')} ({KIND_WORDS.get(t.get('kind', ''), '')}{extra}, "
            f"{int(t.get('tensors', 0)):,} tensors)")


def summary_html(report: CheckReport) -> str:
    """The header: what was checked against what, the answer, counts, notes."""
    part = f" <span style='color:{color('muted')}'>[{escape(report.key)}]</span>" \
        if report.key else ""
    files = (f"<tr><td><b>Checkpoint</b>&nbsp;</td><td>{escape(report.path)}{part}</td></tr>"
             f"<tr><td><b>Model</b>&nbsp;</td><td>{escape(target_text(report))}</td></tr>")
    counts = report.counts()
    items = " &nbsp; ".join(
        f"<span style='color:{status_color(s)}'>●&nbsp;<b>{counts[s]:,}</b>&nbsp;{escape(s)}"
        "</span>" for s in SEVERITY if counts[s])
    if report.compatible:
        verdict = span("ok", "LOADS", bold=True) + " with load_state_dict(sd, strict=True)"
    else:
        verdict = span("danger", "DOES NOT LOAD", bold=True) + \
            " with load_state_dict(sd, strict=True)"
    notes = "".join(f"<div style='color:{color('muted')}'>{escape(n)}</div>"
                    for n in report.notes)
    return (f"<table cellspacing='0'>{files}</table>"
            f"<div style='margin-top:3px'>{verdict} &nbsp; {items}</div>{notes}")


def fix_html(report: CheckReport) -> str:
    """The fix's summary above its code (the code is shown as plain text beside it)."""
    fix = report.fix
    if fix is None:
        return ""
    role = "ok" if fix.compatible else "warning"
    notes = "".join(f"<div style='color:{color('muted')}'>{escape(n)}</div>"
                    for n in fix.notes)
    return f"<b>Fix</b>: {span(role, escape(fix.summary))}{notes}"


def node_html(node: CheckNode | None) -> str:
    """The selected row: a key with both sides and what its status means, or a group."""
    if node is None:
        return ""
    if node.entry is None or node.children:
        counts = " &nbsp; ".join(
            f"<span style='color:{status_color(s)}'>{node.counts[s]:,} {escape(s)}</span>"
            for s in SEVERITY if node.counts.get(s))
        head = (f"<b class='mono'>{breakable(node.key)}</b> "
                f"<span style='color:{status_color(node.worst)}'>{escape(status_text(node))}"
                f"</span> <span class='muted'>— a group of {node.keys:,} keys</span>")
        if node.entry is None:
            return css() + f"<p>{head}<br>{counts}</p>"
    e = node.entry
    sides = "".join(
        f"<tr><th style='white-space:nowrap'>{name}</th><td>"
        f"{escape(s.text()) if s is not None else '<span class=muted>—</span>'}</td></tr>"
        for name, s in (("checkpoint", e.checkpoint), ("model", e.model)))
    return (css() + f"<p><b class='mono'>{breakable(e.key)}</b> "
            f"<span style='color:{status_color(e.status)}'><b>{escape(e.status)}</b></span> "
            f"<span class='muted'>— {escape(STATUS_HELP[e.status])}</span></p>"
            f"<table>{sides}</table>")
