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


def unavailable(device: str) -> str:
    """Why torch cannot put tensors on ``device`` here, in one line ("" when it can): a
    name torch does not know, or a device this machine lacks (``cuda:0`` without a GPU)."""
    import torch

    try:
        torch.empty(1, device=device)
    except Exception as err:  # RuntimeError, AssertionError (torch built without CUDA)...
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()),
                     type(err).__name__)
        return f"device {device} is not available here: {first[:300]}"
    return ""
