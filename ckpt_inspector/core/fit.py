"""Whether a checkpoint's weights fit in the free memory of the devices here: the summary's
"fits on cuda:0 (…free)" or "does not fit on any single device here".

``devices`` are what ``ckpt-inspector devices --json`` lists (``id``, ``free_bytes``:
free memory on a GPU, available system memory for ``cpu``; ``None`` where unknown); the
need is :mod:`ckpt_inspector.core.memory`'s ``weights`` part. Qt-free and torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.summary import human_bytes

ASSUMES = ("Weights only ({need} as saved): no activations, gradients or optimizer state, "
           "and no CUDA context or allocator overhead (a few hundred MiB on a GPU)")
LISTED = 3  # devices named in the sentence, at most


@dataclass
class Fit:
    """Where the weights fit: as saved (``fits``) and cast to float16/bfloat16
    (``fits_half``), as device ids; ``sentence`` says it, ``need`` and ``need_half`` are
    the bytes compared."""

    need: int
    need_half: int
    fits: list[str] = field(default_factory=list)
    fits_half: list[str] = field(default_factory=list)
    sentence: str = ""
    assumes: str = ""  # what the comparison leaves out (ASSUMES, with the need)


def check_fit(memory: dict[str, Any], devices: list[dict[str, Any]]) -> Fit | None:
    """Compare the weights with each device's free memory; None when no device's free
    memory is known (the device list is not in yet, or torch said nothing)."""
    known = [d for d in devices if isinstance(d.get("free_bytes"), int)]
    if not known:
        return None
    weights = memory.get("weights") or {}
    need, half = int(weights.get("saved", 0)), int(weights.get("float16", 0))
    gpus = [d for d in known if d["id"] != "cpu"]
    cpu = next((d for d in known if d["id"] == "cpu"), None)
    result = Fit(need, half, [d["id"] for d in known if d["free_bytes"] >= need],
                 [d["id"] for d in known if d["free_bytes"] >= half])
    result.sentence = _sentence(need, half, gpus, cpu)
    result.assumes = ASSUMES.format(need=human_bytes(need))
    return result


def _sentence(need: int, half: int, gpus: list[dict[str, Any]],
              cpu: dict[str, Any] | None) -> str:
    fit = [d for d in gpus if d["free_bytes"] >= need]
    if fit:
        return "fits on " + _names(fit)
    fit_half = [d for d in gpus if d["free_bytes"] >= half] if half < need else []
    if fit_half:
        return (f"does not fit on any single GPU here as saved; cast to float16 or bfloat16 "
                f"({human_bytes(half)}) it fits on {_names(fit_half)}")
    largest = max(gpus, key=lambda d: d["free_bytes"], default=None)
    short = (f"largest free: {human_bytes(largest['free_bytes'])} on {largest['id']}"
             if largest is not None else "")
    if cpu is not None and cpu["free_bytes"] >= need:
        where = f"in system memory ({human_bytes(cpu['free_bytes'])} available)"
        if not gpus:
            return f"no GPU here; fits {where}"
        return f"does not fit on any single GPU here ({short}); fits {where}"
    if cpu is not None:
        short = ", ".join(s for s in (short, f"system memory: {human_bytes(cpu['free_bytes'])}"
                                      " available") if s)
    return "does not fit on any single device here" + (f" ({short})" if short else "")


def _names(devices: list[dict[str, Any]]) -> str:
    named = [f"{d['id']} ({human_bytes(d['free_bytes'])} free)" for d in devices[:LISTED]]
    more = len(devices) - LISTED
    return ", ".join(named) + (f" and {more} more" if more > 0 else "")
