"""Rich text of a comparison: the header (both files, the key rule, counts by status) and
the selected key (both sides, their statistics, the numbers of the difference).
"""

from __future__ import annotations

from html import escape
from typing import Any

from ckpt_inspector.core.ops.diff import (
    CHANGED,
    DTYPE,
    IDENTICAL,
    KIND,
    ONLY_A,
    ONLY_B,
    SHAPE,
    STATUSES,
    UNREADABLE,
    DiffResult,
    Entry,
    Numbers,
    share_text,
)
from ckpt_inspector.core.ops.difftree import (
    SEVERITY,
    STATUS_HELP,
    Comparison,
    DiffNode,
    status_text,
)
from ckpt_inspector.core.ops.stats import Stats, format_number
from ckpt_inspector.core.ops.tensor_diff import format_cosine
from ckpt_inspector.core.summary import format_value, human_bytes
from ckpt_inspector.core.tree import TensorInfo
from ckpt_inspector.gui.html.checkpoint import breakable, css, stats_kind, stats_pairs
from ckpt_inspector.gui.theme import color, span

# -- what each status looks like: text colour (a theme role), badge colour, badge mark ---------
STATUS_STYLE = {
    IDENTICAL: ("muted", "#9ca3af", "="),
    CHANGED: ("changed", "#f97316", "~"),
    DTYPE: ("warning", "#eab308", "T"),
    SHAPE: ("danger", "#dc2626", "≠"),
    KIND: ("danger", "#dc2626", "≠"),
    ONLY_A: ("accent", "#2563eb", "−"),
    ONLY_B: ("purple", "#9333ea", "+"),
    UNREADABLE: ("danger_fg", "#7f1d1d", "?"),
}


def status_color(status: str) -> str:
    """The text colour of a status in the current theme."""
    return color(STATUS_STYLE[status][0])


def percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` in words people read at a glance, as rich text: 100%, 3.2%,
    &lt;0.1%, 0% (a bare "<" would start a tag)."""
    return escape(share_text(part, whole))


# -- the selected key --------------------------------------------------------------------------
def _cell(value: str, color: str | None = None, bold: bool = False) -> str:
    style = f" style='color:{color}'" if color else ""
    text = f"<b>{value}</b>" if bold else value
    return f"<td{style}>{text}</td>"


def compare_rows(rows: list[tuple[str, str, str]], differ_color: str = "") -> str:
    """A table of (label, A, B) as HTML under a row naming A and B; a B that differs from
    A is bold in ``differ_color``."""
    nowrap = "style='white-space:nowrap'"
    out = ["<tr><th></th><th><b>A</b></th><th><b>B</b></th></tr>"]
    for label, a, b in rows:
        mark = bool(differ_color) and a != b
        out.append(f"<tr><th {nowrap}>{escape(label)}</th>{_cell(a)}"
                   f"{_cell(b, differ_color if mark else None, mark)}</tr>")
    return "<table>" + "".join(out) + "</table>"


def _shape(t: TensorInfo) -> str:
    return "[" + ",".join(str(s) for s in t.shape) + "]"


def side_rows(e: Entry) -> list[tuple[str, str, str]]:
    """What both sides are: the key in each file, dtype, shape, size; or type and value."""
    sides = (e.a, e.b)

    def row(label: str, get: Any) -> tuple[str, str, str]:
        a, b = ("<span class='muted'>—</span>" if s is None else escape(get(s)) for s in sides)
        return label, a, b

    def tensor(get: Any) -> Any:
        return lambda s: get(s.tensor) if s.tensor is not None else ""

    def value(get: Any) -> Any:
        return lambda s: get(s.node) if s.tensor is None else ""

    rows: list[tuple[str, str, str]] = []
    if any(s is not None and s.key != e.key for s in sides):
        rows.append(row("key in the file", lambda s: s.key))
    if any(s is not None and s.tensor is not None for s in sides):
        rows += [row("dtype", tensor(lambda t: t.dtype)), row("shape", tensor(_shape)),
                 row("elements", tensor(lambda t: f"{t.numel:,}")),
                 row("size", tensor(lambda t: human_bytes(t.nbytes)))]
    if any(s is not None and s.tensor is None for s in sides):
        rows += [row("type", value(lambda n: n.type_name or n.kind)),
                 row("value", value(lambda n: format_value(n, 400)))]
    return rows


def stats_columns(a: Stats | str | None, b: Stats | str | None, busy: bool
                  ) -> list[tuple[str, str, str]]:
    """The statistics of both sides row by row (a label missing on one side left empty);
    a message where a side's could not be computed, '…' while it is being computed."""
    pairs = {side: (dict(stats_pairs(s)) if isinstance(s, Stats) else {})
             for side, s in (("a", a), ("b", b))}
    labels = list(pairs["a"]) + [k for k in pairs["b"] if k not in pairs["a"]]

    def filler(s: Stats | str | None) -> str:
        if isinstance(s, str):
            return f"<span class='bad'>{escape(s)}</span>"
        return "…" if busy else ""

    if not labels:
        return [("statistics", filler(a), filler(b))]
    return [(k, pairs["a"].get(k, "" if isinstance(a, Stats) else filler(a)),
             pairs["b"].get(k, "" if isinstance(b, Stats) else filler(b))) for k in labels]


def numbers_rows(n: Numbers) -> list[tuple[str, str]]:
    f = format_number
    rows = [("changed", f"{n.changed:,} of {n.numel:,} ({percent(n.changed, n.numel)})")]
    if n.changed or n.nan_mismatch:
        rows += [("max |A−B|", f(n.max_abs)), ("mean |A−B|", f(n.mean_abs)),
                 ("rel L2 ‖A−B‖/max(‖A‖,‖B‖)", f(n.rel_l2)),
                 ("cosine", format_cosine(n.cosine, 6))]
    if n.nan_mismatch:
        where = "place" if n.nan_mismatch == 1 else "places"
        rows.append(("NaN/inf", f"<span class='bad'><b>{n.nan_mismatch:,}</b> {where} where one "
                                "side only is NaN or ±inf</span>"))
    if n.note:
        rows.append(("note", escape(n.note)))
    return rows


def entry_html(e: Entry, numbers: Numbers | None, stats_a: Stats | str | None,
               stats_b: Stats | str | None, busy: bool) -> str:
    """The selected key: its status, the difference's numbers and both sides (left), the
    statistics of both sides (right)."""
    title = (f"<p><b class='mono'>{breakable(e.key or '(root)')}</b><br>"
             f"<span style='color:{status_color(e.status)}'><b>{escape(e.status)}</b></span> "
             f"<span class='muted'>— {escape(STATUS_HELP[e.status])}</span></p>")
    parts = []
    if e.error:
        parts.append(f"<p class='bad'>{escape(e.error)}</p>")
    if numbers is not None:
        how = " (element by element, in C order)" if e.status == SHAPE else ""
        parts.append(f"<h3>Difference{how}</h3><table>" + "".join(
            f"<tr><th style='white-space:nowrap'>{escape(k)}</th><td>{v}</td></tr>"
            for k, v in numbers_rows(numbers)) + "</table>")
    parts.append("<h3>A and B</h3>" + compare_rows(side_rows(e), color))
    right = ""
    if any(s is not None and s.tensor is not None for s in (e.a, e.b)):
        kinds = {stats_kind(s) for s in (stats_a, stats_b) if isinstance(s, Stats)}
        right = (f"<h3>Statistics{''.join(sorted(kinds))}</h3>"
                 + compare_rows(stats_columns(stats_a, stats_b, busy)))
    return (css() + title + "<table width='100%'><tr><td style='padding-right:18px'>"
            + "".join(parts) + f"</td><td>{right}</td></tr></table>")


def group_html(d: DiffNode) -> str:
    counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for n in d.walk():
        if n.entry is not None:
            counts[n.entry.status] += 1
    rows = "".join(
        f"<tr><td style='color:{status_color(s)}'>{escape(s)}</td>"
        f"<td class='num'>{n:,}</td></tr>" for s, n in counts.items() if n)
    return (css() + f"<p><b class='mono'>{breakable(d.key)}</b><br>"
            f"<span style='color:{status_color(d.worst)}'>"
            f"<b>{escape(status_text(d))}</b></span> <span class='muted'>— a group of "
            f"{d.entries:,} keys</span></p><table>{rows}</table>"
            + (f"<p>{d.elements_changed:,} elements changed below.</p>"
               if d.elements_changed else ""))


LISTED = 10  # changes listed in the overview, and keys of each other status


def _key_link(key: str) -> str:
    from ckpt_inspector.gui.html.overview import key_href

    return f"<a href='{key_href(key)}'>{escape(key or '(the part chosen)')}</a>"


def overview_html(c: Comparison) -> str:
    """What the comparison tab shows before a key is selected: the largest changes with
    their figures, the keys that changed in ways no number measures, each a link that
    selects it."""
    result = c.result
    f = format_number
    parts, others = [], []
    largest = result.largest(LISTED)
    if largest:
        nowrap = "style='white-space:nowrap'"  # a narrow panel scrolls, keys stay whole
        head = "".join(f"<th class='num' {nowrap}>{h}</th>"
                       for h in ("max |A−B|", "rel L2", "cosine", "changed"))
        head = f"<tr><th>key</th>{head}</tr>"
        rows = "".join(
            f"<tr><td {nowrap}>{_key_link(e.key)}</td>" + "".join(
                f"<td class='num' {nowrap}>{cell}</td>" for cell in (
                    f(e.numbers.max_abs, 4), f(e.numbers.rel_l2, 4),
                    format_cosine(e.numbers.cosine, 4),
                    percent(e.numbers.changed, e.numbers.numel))) + "</tr>"
            for e in largest)
        parts.append(f"<h3>Largest changes</h3><table>{head}{rows}</table>")
    for status in (KIND, SHAPE, ONLY_A, ONLY_B, UNREADABLE, DTYPE):
        keys = [e.key for e in result.entries if e.status == status]
        if status == DTYPE:  # those with figures are in the table
            keys = [k for k in keys if k not in {e.key for e in largest}]
        if keys:
            more = (f" <span class='muted'>and {len(keys) - LISTED:,} more</span>"
                    if len(keys) > LISTED else "")
            others.append(f"<p><span style='color:{status_color(status)}'><b>{escape(status)}"
                          f"</b> ({len(keys):,})</span> — "
                          + ", ".join(_key_link(k) for k in keys[:LISTED]) + more + "</p>")
    modules = _changed_modules(c.grouped)
    if len(modules) > 1:
        rows = "".join(
            f"<tr><td>{_key_link(d.key)}</td><td class='num'>{d.changed:,} of {d.entries:,} "
            f"key{'s' if d.entries != 1 else ''}</td>"
            f"<td class='num'>{d.elements_changed:,} elements</td></tr>" for d in modules)
        others.append("<h3>Where the changes are</h3><table>" + rows + "</table>")
    if result.identical:
        parts.append("<p>Every key is identical: the same bytes, or the same value.</p>")
    hint = ("<p class='muted'>Select a key to see both sides, their statistics side by side "
            "and the histogram of A − B.</p>")
    right = hint + "".join(others)
    if not parts:
        return css() + right
    return (css() + "<table width='100%'><tr><td width='55%' style='padding-right:18px'>"
            + "".join(parts) + f"</td><td>{right}</td></tr></table>")


def _changed_modules(top: DiffNode) -> list[DiffNode]:
    """The groups right below the top (or below the one group all keys are in) that hold a
    change, most changed elements first."""
    while len(top.children) == 1 and top.children[0].children:
        top = top.children[0]
    groups = [d for d in top.children if d.changed]
    groups.sort(key=lambda d: (-d.elements_changed, -d.changed))
    return groups[:LISTED]


def rule_text(result: DiffResult) -> str:
    if not result.rules:
        return "Keys matched exactly."
    how = (" — <b>found automatically</b>, because it matches more keys" if result.auto_rule
           else "")
    return ("Keys matched after " + "; ".join(escape(r.describe()) for r in result.rules)
            + how + ".")


VERDICT_STYLE = {"safe": ("ok", "safe"),  # colour role, words
                 "needs-trust": ("warning", "needs trust: loading it with torch runs code"),
                 "dangerous": ("danger", "DANGEROUS: open it in its own tab to see why")}


def verdict_html(verdict: str) -> str:
    """A file's security verdict, so that a comparison never hides a hostile file."""
    role, text = VERDICT_STYLE.get(verdict, ("muted", verdict))
    return span(role, escape(text), bold=True) if verdict else ""


def summary_html(c: Comparison) -> str:
    """The header: both files, the key rule, and how many keys of each status."""
    result = c.result
    files = "".join(
        f"<tr><td><b>{name}</b>&nbsp;</td><td>{escape(ckpt.path)}&nbsp;&nbsp;</td>"
        f"<td style='color:{color('muted')}'>{escape(ckpt.format)} · {t['tensors']:,} tensors · "
        f"{human_bytes(t['nbytes'])}</td><td>&nbsp;&nbsp;{verdict_html(v)}</td></tr>"
        for name, ckpt, t, v in (("A", c.a, c.totals_a, c.verdicts[0]),
                                 ("B", c.b, c.totals_b, c.verdicts[1])))
    counts = result.counts()
    shown = [s for s in SEVERITY if counts[s]]
    items = " &nbsp; ".join(
        f"<span style='color:{status_color(s)}'>●&nbsp;<b>{counts[s]:,}</b>&nbsp;{escape(s)}"
        "</span>" for s in shown) or "no keys on either side"
    if result.identical:
        verdict = span("ok", "IDENTICAL", bold=True)
    else:
        verdict = span("changed", "DIFFERENT", bold=True)
    elements = result.change_summary()  # in the words and figures of `ckpt-inspector diff`
    elements = f" &nbsp;—&nbsp; {escape(elements)}" if elements else ""
    return (f"<table cellspacing='0'>{files}</table>"
            f"<div style='margin-top:3px'>{rule_text(result)}</div>"
            f"<div style='margin-top:3px'>{verdict} &nbsp; {items}{elements}</div>")
