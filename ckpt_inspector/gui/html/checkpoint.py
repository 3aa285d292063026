"""HTML for the summary and selection panels (plain functions, easy to test)."""

from __future__ import annotations

import json
import os
from html import escape
from typing import Any

from ckpt_inspector.core.display import DisplayNode
from ckpt_inspector.core.ops.session import LoadedFile
from ckpt_inspector.core.ops.stats import Stats, format_number
from ckpt_inspector.core.summary import format_value, human_bytes, top_values
from ckpt_inspector.core.torch_load_prediction import predict
from ckpt_inspector.core.tree import Node
from ckpt_inspector.gui.html.memory import memory_html
from ckpt_inspector.gui.html.torch_load import torch_load_html
from ckpt_inspector.gui.remote import name_of, strip_credentials, transfer_counts
from ckpt_inspector.gui.theme import color

# verdict -> (text colour role, background role, what it means); whether torch.load reads the
# file is the torch.load box's to say (formats, opcodes, devices: not the verdict's)
VERDICT_STYLE = {
    "safe": ("ok_fg", "ok_bg", "only data: nothing in it runs when it is read"),
    "needs-trust": ("warning_fg", "warning_bg", "loading it with torch would run code"),
    "dangerous": ("danger_fg", "danger_bg", "do not load this file with torch"),
}

MAX_PIECES = 16  # a tensor's pieces listed in the details panel (then "and N more")
SHORT_NAME = 16  # piece files named in at most this many characters fit a table's column

CSS_TEMPLATE = """
<style>
 body {{ font-size: 10pt; }}
 h3 {{ margin: 10px 0 4px 0; font-size: 10pt; color: {heading}; }}
 table {{ border-collapse: collapse; }}
 td, th {{ padding: 1px 10px 1px 0; vertical-align: top; }}
 th {{ text-align: left; color: {muted}; font-weight: normal; }}
 .num {{ text-align: right; }}
 .muted {{ color: {muted}; }}
 .mono {{ font-family: monospace; font-size: 9pt; }}
 .bad {{ color: {danger}; }}
</style>
"""


def css() -> str:
    """The panels' style sheet in the current theme's colours."""
    return CSS_TEMPLATE.format(**{r: color(r) for r in ("heading", "muted", "danger")})



def _rows(pairs: list[tuple[str, str]], escape_keys: bool = True) -> str:
    nowrap = "style='white-space:nowrap'"
    return "<table>" + "".join(
        f"<tr><th {nowrap}>{escape(k) if escape_keys else k}</th><td>{v}</td></tr>"
        for k, v in pairs) + "</table>"


def breakable(name: str) -> str:
    """HTML for a dotted name that may wrap after ``.`` and ``_``, never mid-word."""
    return escape(name).replace(".", ".\u200b").replace("_", "_\u200b")


def verdict_badge(verdict: str, meaning: str | None = None) -> str:
    fg_role, bg_role, text = VERDICT_STYLE.get(verdict, ("heading", "panel_bg", verdict))
    text = meaning or text
    fg, bg = color(fg_role), color(bg_role)
    # Qt's rich text draws a cell's bgcolor (not a table's CSS background)
    return (f'<table width="100%" cellspacing="0"><tr><td bgcolor="{bg}" style="padding:6px;">'
            f'<b style="color:{fg};">{escape(verdict.upper())}</b>'
            f'<span style="color:{fg};"> — {escape(text)}</span></td></tr></table>')


def safe_meaning(fmt: str) -> str:
    """What ``safe`` means for a file of this format (only data; whether torch.load reads
    it, and how, is the torch.load box's to say)."""
    if fmt == "dcp":
        return "only weights and DCP's own records: nothing in it runs when it is read"
    if fmt == "torchscript":
        return "only weights and TorchScript code, which runs only when the model is called"
    return VERDICT_STYLE["safe"][2]


def summary_html(loaded: LoadedFile, sections: str = "",
                 devices: list[dict[str, Any]] | None = None) -> str:
    """The summary panel; ``sections``: more of it (an adapter's, gui/html/adapter.py), put
    before the files; ``devices``: the devices here with their free memory, once listed (the
    Memory section then says whether the weights fit)."""
    ckpt, report, tot = loaded.ckpt, loaded.report, loaded.totals
    where = strip_credentials(loaded.path)
    parts = [css(), f"<p><b>{breakable(name_of(loaded.path))}</b><br>"
             f'<span class="muted">{breakable(where).replace("/", "/&#8203;")}</span></p>']
    rows = [("format", escape(ckpt.format)), ("file size", human_bytes(ckpt.file_size)),
            ("read in", f"{loaded.seconds * 1000:.0f} ms")]
    counts = transfer_counts(ckpt)
    if counts is not None:  # a URL: what reading its structure took
        n = int(counts.get("requests", 0))
        rows.append(("structure", f"{human_bytes(int(counts.get('bytes', 0)))} in {n:,} "
                                  f"request{'s' if n != 1 else ''}"))
    parts.append(_rows(rows))
    meaning = safe_meaning(ckpt.format) if report.verdict == "safe" else None
    if meaning and report.unscanned:  # the verdict covers only the files that were read
        n = len(report.unscanned)
        meaning = (f"incomplete: {n} file{'s' if n != 1 else ''} not scanned "
                   f"({', '.join(report.unscanned[:3])}); the rest is {meaning}")
    parts.append("<h3>Security</h3>" + verdict_badge(report.verdict, meaning))
    danger = [f for f in report.findings if f.severity == "dangerous"]
    if danger:
        items = [f'<li class="bad">{escape(f.message)}'
                 + (f' <span class="muted">(byte {f.offset}'
                    f'{" of " + escape(f.member) if f.member else ""})</span>'
                    if f.offset is not None else "") + "</li>" for f in danger[:12]]
        if len(danger) > 12:
            items.append(f"<li>… {len(danger) - 12} more</li>")
        parts.append("<ul style='margin-left:-20px'>" + "".join(items) + "</ul>")
    trust = [f for f in report.findings if f.severity == "needs-trust"]
    if any(f.name for f in trust):
        ordered = report.flagged_names()
        parts.append("<p>Imports outside torch's weights-only allowlist "
                     f"({len(ordered)}):<br><span class='mono'>"
                     + "<br>".join(breakable(n) for n in ordered[:20])
                     + ("<br>…" if len(ordered) > 20 else "") + "</span></p>")
    for f in trust:
        if not f.name:
            parts.append(f"<p>{escape(f.message)}</p>")
    parts.append(torch_load_html(loaded.torch_load or predict(
        ckpt, report, devices=tot.get("devices") or {})))
    parts.append("<h3>Tensors</h3>")
    pairs = [("tensors", f"{tot['tensors']:,}"), ("elements", f"{tot['numel']:,}"),
             ("size", human_bytes(tot["nbytes"]))]
    if tot["storage_nbytes"] and tot["storage_nbytes"] != tot["nbytes"]:
        pairs.append(("storage on disk", human_bytes(tot["storage_nbytes"])))
    if tot["devices"]:
        pairs.append(("saved on", escape(", ".join(f"{d} ({n:,})" for d, n in
                                                   tot["devices"].items()))))
    if tot["damaged_tensors"]:
        pairs.append(("damaged", f'<span class="bad">{tot["damaged_tensors"]}</span>'))
    parts.append(_rows(pairs))
    if tot["by_dtype"]:
        rows = "".join(
            f"<tr><td class='mono' style='white-space:nowrap'>{escape(d)}</td>"
            f"<td class='num' style='white-space:nowrap'>{v['tensors']:,}</td>"
            f"<td class='num' style='white-space:nowrap'>{human_bytes(v['nbytes'])}</td></tr>"
            for d, v in tot["by_dtype"].items())
        nw = "style='white-space:nowrap'"
        # three columns: a panel yielding room to the tree is ~220 pixels wide (the
        # elements of each dtype, a fourth, made it scroll sideways at 1024×700)
        parts.append(f"<table><tr><th {nw}>dtype</th><th class='num' {nw}>tensors</th>"
                     f"<th class='num' {nw}>size</th></tr>{rows}</table>")
    parts.append(memory_html(tot.get("memory"), devices))
    values, total = top_values(ckpt.root)
    if values:
        parts.append("<h3>Values</h3>")
        rows = [(breakable(k), f"<span class='mono'>{escape(format_value(n, 80))}</span>")
                for k, n in values]
        if total > len(values):
            rows.append(("", f"<span class='muted'>… {total - len(values):,} more in the "
                             "tree</span>"))
        parts.append(_rows(rows, escape_keys=False))
    parts.append(sections)
    parts.append(_files_html(ckpt.files))
    parts.append(_metadata_html(ckpt.metadata))
    if ckpt.warnings:
        parts.append("<h3>Warnings</h3><ul style='margin-left:-20px'>" + "".join(
            f"<li>{escape(w)}</li>" for w in ckpt.warnings[:10]) + "</ul>")
    return "".join(parts)


def _metadata_html(metadata: dict[str, Any]) -> str:
    """The file's metadata (a config.json as a table of its own) and the code files it
    lists."""
    parts: list[str] = []
    meta = {k: v for k, v in metadata.items() if k not in ("code files", "remote")}
    tables = {k: v for k, v in meta.items() if k in KEY_VALUE_TABLES and isinstance(v, dict)}
    meta = {k: v for k, v in meta.items() if k not in tables}
    if meta:
        parts.append("<h3>File metadata</h3>")
        parts.append(_rows([(k, escape(_short(v, 300))) for k, v in meta.items()]))
    for name, table in tables.items():
        parts.append(_key_values(KEY_VALUE_TABLES[name], table))
    if "code files" in metadata:
        files = metadata["code files"]
        parts.append(f"<h3>Code ({len(files)} files, listed, never run)</h3>")
        parts.append("<span class='mono muted'>" + "<br>".join(escape(f) for f in files[:15])
                     + ("<br>…" if len(files) > 15 else "") + "</span>")
    return "".join(parts)


# metadata shown as tables, under these titles
KEY_VALUE_TABLES = {"config": "config.json", "adapter_config": "adapter_config.json"}
TABLE_ROWS = 40  # rows of such a table (then "… N more")


def _key_values(title: str, values: dict[str, Any]) -> str:
    """A metadata dict (a model's config.json) as a compact table of its top-level keys,
    long values cut short."""
    rows = [(breakable(str(k)), f"<span class='mono'>{escape(_short(v, 60))}</span>")
            for k, v in list(values.items())[:TABLE_ROWS]]
    if len(values) > TABLE_ROWS:
        rows.append(("", f"<span class='muted'>… {len(values) - TABLE_ROWS:,} more</span>"))
    return f"<h3>{escape(title)} ({len(values):,})</h3>" + _rows(rows, escape_keys=False)


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stats_pairs(stats: Stats) -> list[tuple[str, str]]:
    """(label, HTML) of each statistic of a tensor, NaN and inf in red when present."""
    f = format_number
    pairs: list[tuple[str, str]] = []
    if stats.min is not None:
        pairs += [("min", f(stats.min)), ("max", f(stats.max)), ("mean", f(stats.mean)),
                  ("std (÷n)", f(stats.std))]
        if stats.kind != "bool":
            pairs += [("mean |x|", f(stats.abs_mean)), ("L2 norm", f(stats.l2))]
    if stats.true is not None:
        pairs.append(("True", f"{stats.true:,} ({stats.true / stats.numel:.1%})"))
    pairs.append(("zeros", f"{stats.zeros:,} ({stats.sparsity:.1%})"))
    for n, label in ((stats.nan, "NaN"), (stats.posinf, "+inf"), (stats.neginf, "−inf")):
        if n or stats.kind in ("float", "complex magnitude"):
            pairs.append((label, f"<span class='bad'><b>{n:,}</b></span>" if n else "0"))
    if stats.unique is not None:
        top = ", ".join(f"{v:,} ({c:,})" for v, c in stats.top_values[:6])
        pairs.append(("distinct", f"{stats.unique:,}"))
        pairs.append(("most common", f"<span class='mono'>{escape(top)}</span>"))
    if stats.note:
        pairs.append(("note", escape(stats.note)))
    return pairs


STATS_OF = {"complex magnitude": " (of |value|)", "quantized": " (dequantized)"}


def stats_kind(stats: Stats) -> str:
    """What the statistics are of, when not the values themselves: ' (of |value|)'."""
    return STATS_OF.get(stats.kind, "")


def stats_rows(stats: Stats) -> str:
    """The statistics of a tensor as table rows, NaN and inf in red when present."""
    where = f" on {escape(stats.device)}" if stats.device != "cpu" else ""
    return (f"<h3>Statistics{stats_kind(stats)}</h3>" + _rows(stats_pairs(stats))
            + f"<p class='muted'>computed in {stats.seconds * 1000:,.0f} ms{where}</p>")


def _file_format(f: dict[str, Any]) -> str:
    """A file's format, or in red what is wrong with it ("missing", "unreadable": the
    problem itself is in the Warnings)."""
    problem = f.get("problem")
    if problem:
        word = "missing" if problem == "missing" else "unreadable"
        return f"<span class='bad'>{word}</span>"
    return f"<span class='muted'>{escape(str(f.get('format') or ''))}</span>"


def _files_html(files: list[dict[str, Any]], shown: int = 50) -> str:
    """The files of a checkpoint made of several, with their sizes and formats."""
    if not files:
        return ""
    nw = "style='white-space:nowrap'"
    rows = "".join(
        f"<tr><td>{breakable(str(f.get('path', '')))}</td>"
        f"<td class='num' {nw}>{human_bytes(int(f.get('size') or 0))}</td>"
        f"<td {nw}>{_file_format(f)}</td></tr>" for f in files[:shown])
    more = (f"<span class='muted'>… {len(files) - shown:,} more</span>"
            if len(files) > shown else "")
    return f"<h3>Files ({len(files)})</h3><table>{rows}</table>{more}"


def _ints(values: Any) -> str:
    return ", ".join(f"{int(v):,}" for v in values) if isinstance(values, (list, tuple)) \
        else escape(str(values))


def _piece_cells(piece: dict[str, Any]) -> tuple[str, str]:
    """Where a piece starts in the whole tensor, and how big it is: offsets and shape for a
    block (DCP), first element and count for a run of the flattened tensor (ZeRO)."""
    if "offsets" in piece or "shape" in piece:
        return (f"[{_ints(piece.get('offsets', ()))}]", f"[{_ints(piece.get('shape', ()))}]")
    if "numel" in piece:
        n = int(piece.get("numel") or 0)
        return (f"element {int(piece.get('at') or 0):,}",
                f"{n:,} element{'s' if n != 1 else ''}")
    rest = {k: v for k, v in piece.items() if k != "file"}
    return "", escape(json.dumps(rest, default=str)[:120])


def pieces_html(pieces: list[dict[str, Any]], shown: int = MAX_PIECES) -> str:
    """The chunks a tensor was saved in (a DCP tensor sharded across ranks, a ZeRO
    partition): each one's file, where it starts in the whole tensor, and its size."""
    if not pieces:
        return ""
    nw = "style='white-space:nowrap'"
    files = [str(p.get("file", "")) for p in pieces]
    folders = {os.path.dirname(f) for f in files}
    folder = folders.pop() if len(folders) == 1 else ""  # said once, in the heading
    names = [os.path.relpath(f, folder) if folder else f for f in files[:shown]]
    cells = [_piece_cells(p) for p in pieces[:shown]]
    more = (f"<p class='muted'>… and {len(pieces) - shown:,} more</p>"
            if len(pieces) > shown else "")
    size = "shape" if "shape" in pieces[0] else "size"
    where = f" <span class='muted'>in {escape(folder)}/</span>" if folder else ""
    head = f"<h3>Pieces ({len(pieces):,}){where}</h3>"
    if max(len(n) for n in names) > SHORT_NAME:  # a line for the name, one for the rest
        label = "shape " if size == "shape" else ""
        return head + "".join(
            f"<p style='margin:0 0 3px 0'><span class='mono'>{breakable(n)}</span><br>"
            f"<span class='muted'>&nbsp;&nbsp;at {start} · {label}{extent}</span></p>"
            for n, (start, extent) in zip(names, cells)) + more
    rows = "".join(f"<tr><td class='mono'>{escape(n)}</td>"
                   + "".join(f"<td class='mono' {nw}>{c}</td>" for c in cell) + "</tr>"
                   for n, cell in zip(names, cells))
    return (f"{head}<table><tr><th>file</th><th {nw}>starts at</th><th>{size}</th></tr>"
            f"{rows}</table>{more}")


def _tensor_pairs(node: Node, target_device: str) -> list[tuple[str, str]]:
    """What the details panel says of a tensor, row by row."""
    t = node.tensor
    assert t is not None
    device = t.device if t.device == target_device else f"{t.device} → {target_device}"
    pairs = [
        ("dtype", escape(t.dtype)),
        ("shape", escape(str(list(t.shape)))),
        ("elements", f"{t.numel:,}"),
        ("size", human_bytes(t.nbytes)),
        ("device", escape(device)),
        ("stride", escape(str(list(t.stride)) if t.stride is not None else "contiguous")),
        ("storage offset", f"{t.storage_offset:,}"),
    ]
    if t.pieces:
        files = len({str(p.get("file")) for p in t.pieces})
        pairs.append(("saved in", f"{len(t.pieces):,} pieces, {files:,} "
                                  f"file{'s' if files != 1 else ''}"))
    elif t.file:
        pairs.append(("file", escape(t.file)))
    if node.role:
        pairs.append(("role", escape(node.role)))
    if t.requires_grad:
        pairs.append(("requires_grad", "True"))
    if t.storage is not None:
        pairs.append(("storage", escape(f"{t.storage.key} ({t.storage.dtype}, "
                                        f"{human_bytes(t.storage.nbytes)})")))
    if t.quantization:
        pairs.append(("quantization", escape(json.dumps(t.quantization, default=str))))
    if t.layout != "strided":
        pairs.append(("layout", escape(t.layout)))
    if t.subclass:
        pairs.append(("subclass", escape(t.subclass)))
    if t.problem:
        pairs.append(("problem", f"<span class='bad'>{escape(t.problem)}</span>"))
    return pairs


def details_html(d: DisplayNode | None, target_device: str, stats: Stats | None = None) -> str:
    if d is None:
        return css() + "<p class='muted'>Select a row to see its details.</p>"
    node = d.node
    parts = [css(), f"<p><b class='mono'>{escape(d.key or '(root)')}</b></p>"]
    if node is None:
        parts.append(_rows([("kind", "group of dotted keys"),
                            ("tensors", f"{d.tensors:,}"), ("elements", f"{d.numel:,}"),
                            ("size", human_bytes(d.nbytes))]))
        return "".join(parts)
    if node.tensor is not None:
        parts.append(_rows(_tensor_pairs(node, target_device)))
        parts.append(pieces_html(node.tensor.pieces or []))
        if stats is not None:
            parts.append(stats_rows(stats))
        return "".join(parts)
    pairs = [("type", escape(node.type_name or node.kind))]
    if node.kind in ("scalar", "str", "value", "none", "bytes", "ref") or node.value is not None:
        pairs.append(("value", f"<span class='mono'>{escape(format_value(node, 2000))}</span>"))
    if node.children:
        pairs.append(("entries", f"{len(node.children):,}"))
    if d.tensors:
        pairs += [("tensors", f"{d.tensors:,}"), ("elements", f"{d.numel:,}"),
                  ("size", human_bytes(d.nbytes))]
    if node.role:
        pairs.append(("role", escape(node.role)))
    if node.note:
        pairs.append(("note", escape(node.note)))
    parts.append(_rows(pairs))
    return "".join(parts)
