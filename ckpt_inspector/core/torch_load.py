"""Loading a checkpoint with torch itself, only for files whose verdict is ``safe``.

Used by ``ckpt-inspector load`` and, through that command in a child process, by the
app: torch never has to be imported into the window's process.
"""

from __future__ import annotations

import time
import warnings
from typing import Any


def load_weights(path: str, device: str) -> dict[str, Any]:
    """``torch.load(path, map_location=device, weights_only=True)`` and what came back.

    The caller has checked the verdict: this is the weights-only loader, which refuses
    anything but plain weights even so.
    """
    start = time.perf_counter()
    import torch

    imported = time.perf_counter()
    with warnings.catch_warnings():  # torch's notes about experimental dtypes, not ours
        warnings.simplefilter("ignore", UserWarning)
        obj = torch.load(path, map_location=device, weights_only=True)
    count = 0
    nbytes = 0
    devices: set[str] = set()
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            count += 1
            nbytes += v.numel() * v.element_size()
            devices.add(str(v.device))
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return {"tensors": count, "nbytes": nbytes, "devices": sorted(devices),
            "seconds": time.perf_counter() - imported,
            "import_seconds": imported - start}
