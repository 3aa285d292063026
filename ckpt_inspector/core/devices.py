"""Devices torch can materialize tensors on: the choices for ``map_location``, with the
memory free on each (what the summary's "fits on cuda:0" compares with)."""

from __future__ import annotations

import os
from typing import Any

SYSTEM_MEMORY = "available system memory (the operating system's estimate, not torch's)"


def list_devices() -> list[dict[str, Any]]:
    """``[{"id": "cpu", "label": "cpu", "free_bytes", "total_bytes", "free_is"}, {"id":
    "cuda:0", "label": "cuda:0 — <name>", "memory", "free_bytes", "total_bytes", "free_is"},
    ...]``: a GPU's free and total bytes from ``torch.cuda.mem_get_info`` (``memory``: its
    total as its properties say); for ``cpu`` the system memory available; ``free_is``
    says which; ``None`` where unknown (an Apple GPU shares the system's memory)."""
    import torch

    free, total = system_memory()
    out: list[dict[str, Any]] = [{"id": "cpu", "label": "cpu", "free_bytes": free,
                                  "total_bytes": total, "free_is": SYSTEM_MEMORY}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free_i, total_i = _cuda_memory(torch, i, props.total_memory)
            out.append({"id": f"cuda:{i}", "label": f"cuda:{i} — {props.name}",
                        "memory": props.total_memory, "free_bytes": free_i,
                        "total_bytes": total_i, "free_is": "torch.cuda.mem_get_info"})
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():  # memory shared with the cpu: not apart
        out.append({"id": "mps", "label": "mps — Apple GPU", "free_bytes": None,
                    "total_bytes": None, "free_is": None})
    return out


def _cuda_memory(torch: Any, index: int, total: int) -> tuple[int | None, int]:
    """(free, total) bytes of a GPU now (free ``None`` when the driver will not say)."""
    try:
        free, total = torch.cuda.mem_get_info(index)
    except Exception:  # a busy or broken device: its total is still known
        return None, int(total)
    return int(free), int(total)


def system_memory() -> tuple[int | None, int | None]:
    """(available, total) bytes of system memory: ``MemAvailable`` of /proc/meminfo on
    Linux (what can be allocated without swapping), else ``os.sysconf``'s free pages;
    ``None`` where the system says neither."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return (_kib(fields.get("MemAvailable")), _kib(fields.get("MemTotal")))
    except (OSError, ValueError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    except (AttributeError, OSError, ValueError):
        return None, None


def _kib(text: str | None) -> int | None:
    if not text:
        return None
    parts = text.split()
    return int(parts[0]) * 1024 if parts and parts[0].isdigit() else None


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
