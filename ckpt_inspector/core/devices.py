"""Devices torch can materialize tensors on: the choices for ``map_location``."""

from __future__ import annotations

from typing import Any


def list_devices() -> list[dict[str, Any]]:
    """``[{"id": "cpu", "label": ...}, {"id": "cuda:0", "label": "cuda:0 — <name>"}, ...]``."""
    import torch

    out: list[dict[str, Any]] = [{"id": "cpu", "label": "cpu"}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append({"id": f"cuda:{i}", "label": f"cuda:{i} — {props.name}",
                        "memory": props.total_memory})
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append({"id": "mps", "label": "mps — Apple GPU"})
    return out
