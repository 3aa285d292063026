"""What the panel under the key tree shows before a tensor is selected: where the bytes of
the file (or of the selected group) are, its largest tensors and parts, each a link that
selects it, and, for the whole file, what one can do next.

Finding the largest tensors visits few rows: a group row's byte total bounds every tensor
below it, so a best-first walk stops after the tensors it lists (a flat mapping of
100,000 keys is one heap of its rows).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from html import escape
from operator import attrgetter
from urllib.parse import quote, unquote

from ckpt_inspector.core.display import DisplayNode
from ckpt_inspector.core.summary import human_bytes
from ckpt_inspector.gui.html.checkpoint import breakable, css

LISTED = 10  # tensors and parts listed
WIDE = 760  # pixels from which the tensors and the parts stand side by side
NOWRAP = "style='white-space:nowrap'"
KEY_LINK = "key:"  # href of a link that selects a key in the tree


def key_href(key: str) -> str:
    return KEY_LINK + quote(key, safe="")


def key_of_href(href: str) -> str | None:
    """The key a link selects, or None for another link."""
    return unquote(href[len(KEY_LINK):]) if href.startswith(KEY_LINK) else None


def largest_tensors(top: DisplayNode, n: int = LISTED) -> list[DisplayNode]:
    """The rows of the ``n`` largest tensors below ``top`` by bytes, largest first (ties in
    the tree's order). A group is opened only while the largest tensor below it (its
    ``largest``) could still be among them, so 100,000 equal tensors cost a few dozen steps,
    not a walk of them all (it runs on the window's thread)."""
    out: list[DisplayNode] = []
    # (-bytes, 0 a tensor / 1 a group, -order, row): a group's bytes are its largest
    # tensor's, and a tensor of equal size comes out before the group is opened; of equal
    # rows the last pushed goes first, children pushed last to first: ties come out in the
    # tree's order, down one branch at a time (not across every group)
    heap: list[tuple[int, int, int, DisplayNode]] = []
    count = 0

    def push(d: DisplayNode) -> None:
        nonlocal count
        if d.is_tensor:  # the row's own tensor (a key that other keys extend has both)
            heapq.heappush(heap, (-d.node.tensor.nbytes, 0, -count, d))
            count += 1
        if d.children and d.tensors > d.is_tensor:
            heapq.heappush(heap, (-d.largest, 1, -count, d))
            count += 1

    push(top)
    while heap and len(out) < n:
        _bytes, below, _order, d = heapq.heappop(heap)
        if not below:
            out.append(d)
            continue
        for child in reversed(_contenders(d.children, n)):  # the first child last: it
            push(child)                                        # comes out first
    return out


def _contenders(children: list[DisplayNode], n: int) -> list[DisplayNode]:
    """The children that can hold one of the ``n`` largest tensors below their parent, in
    the tree's order: those ``n`` whose largest tensors are the largest (the first of equal
    ones). Any other child's tensors are all outdone by ``n`` tensors, one in each of
    these. A module of 100,000 layers is sorted in C, not pushed through the heap.

    Only where the children are all alike (all groups, or all leaves): where a tensor row
    and a group row of equal size are siblings, the walk takes the tensor first, an order
    a sort by size alone does not keep, so every child is pushed."""
    if len(children) <= 4 * n or (any(map(_NODE, children)) and
                                  any(map(_CHILDREN, children))):
        return children
    best = sorted(children, key=attrgetter("largest"), reverse=True)[:n]  # stable: ties
    return sorted(best, key=attrgetter("row"))  # in the tree's order


def _parts(top: DisplayNode) -> list[DisplayNode]:
    """The largest groups holding tensors right below ``top``, or below the one group that
    holds them all (``model`` of a training checkpoint); none for a flat mapping."""
    while True:  # filtered in C: a module may hold 100,000 layers
        groups = list(filter(_TENSORS, filter(_CHILDREN, top.children)))
        if len(groups) != 1 or groups[0].tensors != top.tensors:
            break
        top = groups[0]
    # sorted in C (equal ones keep the tree's order, as heapq.nlargest would)
    return sorted(groups, key=_NBYTES, reverse=True)[:LISTED] if len(groups) > 1 else []


_TENSORS, _CHILDREN, _NBYTES, _NODE = attrgetter("tensors"), attrgetter("children"), \
    attrgetter("nbytes"), attrgetter("node")


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole and part / whole >= 0.005 else "&lt;1%"


def _tensor_rows(rows: list[DisplayNode], whole: int, top_key: str) -> Iterator[str]:
    for d in rows:
        t = d.node.tensor
        key = d.key[len(top_key) + 1:] if top_key and d.key.startswith(top_key + ".") \
            else d.key
        shape = "×".join(str(s) for s in t.shape) or "scalar"
        yield (f"<tr><td {NOWRAP}><a href='{key_href(d.key)}'>{escape(key or '(root)')}</a>"
               f"</td><td class='muted' {NOWRAP}>{escape(t.dtype)}</td>"
               f"<td class='mono' {NOWRAP}>{shape}</td>"
               f"<td class='num' {NOWRAP}>{human_bytes(t.nbytes)}</td>"
               f"<td class='num muted' {NOWRAP}>{_share(t.nbytes, whole)}</td></tr>")


def _part_rows(rows: list[DisplayNode], whole: int) -> Iterator[str]:
    for d in rows:
        yield (f"<tr><td {NOWRAP}><a href='{key_href(d.key)}'>{escape(d.key)}</a></td>"
               f"<td class='num muted' {NOWRAP}>{d.tensors:,} "
               f"tensor{'s' if d.tensors != 1 else ''}</td>"
               f"<td class='num' {NOWRAP}>{human_bytes(d.nbytes)}</td>"
               f"<td class='num muted' {NOWRAP}>{_share(d.nbytes, whole)}</td></tr>")


HINTS = (
    "Select a tensor for its <b>statistics</b>, <b>histogram</b>, <b>heatmap</b> and "
    "<b>values</b> (computed from the file's bytes; nothing runs).",
    "Filter the keys (Ctrl+F): <code>conv</code>, <code>dtype:bf16</code>, "
    "<code>shape:**x3x3</code> (every 3×3 kernel), <code>re:^layer[12]\\.</code>, "
    "<code>device:cuda</code> — <b>?</b> beside the field lists them all.",
    "Compare with another checkpoint (Ctrl+D, or drop a file with Shift held); export to "
    "safetensors, TorchScript, ONNX or .pt2 (Ctrl+E); right-click a row to copy keys.",
)


def overview_html(top: DisplayNode, title: str = "", hints: bool = True,
                  wide: bool = True) -> str:
    """The largest tensors and parts of ``top`` (the file's rows, or a group's), linked;
    with ``hints``, what one can do next; side by side if ``wide``, else one under the
    other."""
    whole = top.nbytes
    what = f"<b class='mono'>{breakable(title)}</b>: " if title else ""
    head = (f"<p>{what}{top.tensors:,} tensor{'s' if top.tensors != 1 else ''}, "
            f"{top.numel:,} elements, {human_bytes(whole)}</p>") if top.tensors else \
        f"<p>{what}no tensors.</p>"
    left = right = ""
    tensors = largest_tensors(top)
    if tensors:
        left = ("<h3>Largest tensors</h3><table>"
                + "".join(_tensor_rows(tensors, whole, top.key)) + "</table>")
    parts = _parts(top)
    if parts:
        right = ("<h3>Largest parts</h3><table>" + "".join(_part_rows(parts, whole))
                 + "</table>")
    if hints:
        right += "<h3>Next</h3>" + "".join(f"<p>{h}</p>" for h in HINTS)
    body = (f"<table width='100%'><tr><td width='55%' style='padding-right:18px'>{left}</td>"
            f"<td>{right}</td></tr></table>") if left and right and wide else left + right
    return css() + head + body
