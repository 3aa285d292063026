"""The summary's Memory section: what the tensors take as saved and as float16/bfloat16, a
training checkpoint's optimizer share, and whether the weights fit on a device here."""

from __future__ import annotations

from html import escape
from typing import Any

from ckpt_inspector.core.fit import check_fit
from ckpt_inspector.core.summary import human_bytes

NOT_LISTED = ("Whether it fits: open the Device picker (the toolbar's list), which asks "
              "torch for each GPU's free memory")


def memory_html(memory: dict[str, Any] | None, devices: list[dict[str, Any]] | None) -> str:
    """The Memory section of a summary (``memory``: ``totals["memory"]``; ``devices``: the
    device list with free memory, ``None`` until the picker was opened)."""
    if not memory or not memory.get("saved"):
        return ""
    nw = "style='white-space:nowrap'"
    rows = [("as saved", size(memory["saved"])),
            ("as fp16 / bf16", size(memory["float16"]))]
    opt, other, weights = memory.get("optimizer"), memory.get("other"), memory["weights"]
    if opt is not None or other:
        rows.append(("weights", f"{size(weights['saved'])} <span class='muted'>"
                                f"({size(weights['float16'])} as fp16)</span>"))
    if opt is not None:
        share = memory.get("optimizer_share", 0)
        rows.append(("optimizer state", f"{size(opt['saved'])} "
                                        f"<span class='muted'>({share:.0%} of all)</span>"))
    if other:
        rows.append(("other tensors", size(other["saved"])))
    table = "<table>" + "".join(f"<tr><th {nw}>{escape(k)}</th><td>{v}</td></tr>"
                                for k, v in rows) + "</table>"
    parts = ["<h3>Memory</h3>", table]
    if memory.get("note"):
        parts.append(f"<p class='muted'>{escape(memory['note'])}</p>")
    parts.append(fit_html(memory, devices))
    return "".join(parts)


def size(n: int) -> str:
    """A size that never wraps between its number and its unit."""
    return human_bytes(n).replace(" ", "&nbsp;")


def fit_html(memory: dict[str, Any], devices: list[dict[str, Any]] | None) -> str:
    """"fits on cuda:0 (… free)" or "does not fit …", with what that assumes; a pointer
    to the device picker while the devices' memory is unknown."""
    fit = check_fit(memory, devices) if devices is not None else None
    if fit is None:
        return f"<p class='muted'>{escape(NOT_LISTED)}</p>"
    cls = "" if fit.sentence.startswith(("fits", "no GPU here; fits")) else " class='bad'"
    return (f"<p id='fit'><b{cls}>{escape(fit.sentence[0].upper() + fit.sentence[1:])}"
            f"</b><br><span class='muted'>{escape(fit.assumes)}. Free memory as it was "
            "when the Device picker was first opened.</span></p>")
