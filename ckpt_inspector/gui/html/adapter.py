"""HTML for a LoRA adapter: its section of the summary panel (what it is, then rank, alpha
and scale per adapted module, modules that differ only in their layer numbers folded into one
row) and the rows the details panel adds for a tensor of a pair."""

from __future__ import annotations

from html import escape
from typing import Any

from ckpt_inspector.core.adapters import AdaptedModule, Adapter, module_groups, short
from ckpt_inspector.core.adapters.text import KINDS, NAMINGS, common_prefix, counts_text, scale_rule
from ckpt_inspector.core.ops.stats import Stats
from ckpt_inspector.gui.html.checkpoint import _rows, breakable, stats_pairs

MAX_GROUPS = 12  # rows of the module table (then "… N more"; info --json lists them all)
NOWRAP = "style='white-space:nowrap'"


def adapter_html(adapter: Adapter | None, max_groups: int = MAX_GROUPS) -> str:
    """The summary's Adapter section ("" for a checkpoint without LoRA pairs)."""
    if adapter is None:
        return ""
    mods = adapter.modules
    rows: list[tuple[str, str]] = [
        ("kind", escape(f"{KINDS.get(adapter.kind, adapter.kind)} "
                        f"({NAMINGS.get(adapter.naming, adapter.naming)})"))]
    if adapter.base_model:
        rows.append(("base model", f"<span class='mono'>{breakable(adapter.base_model)}</span>"))
    rows += [("modules", f"{len(mods):,}"),
             ("rank", escape(counts_text([m.rank for m in mods]))),
             ("alpha", escape(counts_text([m.alpha for m in mods]))),
             ("scale", escape(f"{counts_text([m.scale for m in mods])} = "
                              f"{scale_rule(adapter)}"))]
    targets = adapter.config.get("target_modules")
    if targets:
        text = ", ".join(map(str, targets)) if isinstance(targets, list) else str(targets)
        rows.append(("targets", f"<span class='mono'>{breakable(text)}</span>"))
    if adapter.other_tensors:
        saved = adapter.config.get("modules_to_save")
        what = f" ({', '.join(map(str, saved))})" if saved else ""
        rows.append(("saved whole", escape(f"{len(adapter.other_tensors):,} tensors{what}")))
    parts = ["<h3>Adapter</h3>", _rows(rows), _module_table(adapter, max_groups)]
    if adapter.notes:
        parts.append("<ul style='margin-left:-20px'>" + "".join(
            f"<li class='muted'>{escape(n)}</li>" for n in adapter.notes[:6]) + "</ul>")
    parts.append("<p class='muted'>Select a lora_A / lora_B (down / up) tensor and press "
                 "<i>Effective update</i> for the statistics of scale·B@A.</p>")
    return "".join(parts)


def _module_table(adapter: Adapter, max_groups: int) -> str:
    prefix = common_prefix(adapter)
    groups = module_groups(adapter.modules, prefix)
    body = []
    for g in groups[:max_groups]:
        m = g.first
        count = f" <span class='muted'>×{len(g.modules)}</span>" if len(g.modules) > 1 else ""
        name = f"<span class='mono'>{breakable(g.pattern)}</span>{count}"
        if m.problem:
            name += f"<br><span class='bad'>{escape(m.problem)}</span>"
        # the numbers first: in a narrow panel only the name wraps (at its dots)
        body.append(f"<tr><td class='num' {NOWRAP}>{m.rank}</td>"
                    f"<td class='num' {NOWRAP}>{escape(short(m.alpha))}</td>"
                    f"<td class='num' {NOWRAP}>{escape(short(m.scale))}</td>"
                    f"<td>{name}</td></tr>")
    more = ""
    if len(groups) > max_groups:
        hidden = sum(len(g.modules) for g in groups[max_groups:])
        more = (f"<p class='muted'>… {len(groups) - max_groups:,} more rows ({hidden:,} "
                "modules): info --json lists every module</p>")
    title = "module" + (f" <span class='muted'>(after {breakable(prefix)})</span>" if prefix
                        else "")
    return (f"<table><tr><th class='num' {NOWRAP}>r</th><th class='num' {NOWRAP}>alpha</th>"
            f"<th class='num' {NOWRAP}>scale</th><th>{title}</th></tr>"
            + "".join(body) + "</table>" + more)


def pair_html(module: AdaptedModule | None, stats: Stats | None = None) -> str:
    """The details panel's rows for a tensor of a LoRA pair ("" for any other tensor), and
    the statistics of the pair's effective update when they were computed."""
    if module is None:
        return ""
    pairs: list[tuple[str, Any]] = [
        ("module", f"<span class='mono'>{breakable(module.name)}</span>"),
        ("A (down)", f"<span class='mono'>{breakable(module.a_key)}</span>"),
        ("B (up)", f"<span class='mono'>{breakable(module.b_key)}</span>"),
        ("kind", escape(module.kind)),
        ("rank", f"{module.rank:,}"),
        ("alpha", escape(f"{short(module.alpha)} ({module.alpha_from})")),
        ("scale", escape(short(module.scale))),
        ("update", escape(str(list(module.update_shape))) if module.update_shape else
         f"<span class='bad'>{escape(module.problem or '')}</span>"),
    ]
    pairs += [("note", escape(n)) for n in module.notes]
    html = "<h3>LoRA pair</h3>" + _rows(pairs)
    if stats is not None:
        html += "<h3>Effective update scale·B@A</h3>" + _rows(stats_pairs(stats))
    return html
