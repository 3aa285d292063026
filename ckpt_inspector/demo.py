"""The demo checkpoint: a torchvision resnet18 training checkpoint, made locally.

No weights are downloaded: the model is built with ``weights=None`` and
trained for two steps on random data so the optimizer has state. The file is
cached in the user's cache folder and made again only if it is missing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_dir() -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "ckpt-inspector"


def make_demo(path: Path) -> Path:
    """Write a resnet18 training checkpoint (epoch, model, optimizer, loss) to ``path``."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.randn(4, 3, 64, 64)
    y = torch.randint(0, 1000, (4,))
    loss = torch.tensor(0.0)
    for _ in range(2):
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
    checkpoint = {
        "epoch": 2,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": loss.item(),
        "arch": "resnet18",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return path


def demo_checkpoint() -> Path:
    path = cache_dir() / "demo-resnet18-training.ckpt"
    if not path.exists():
        make_demo(path)
    return path
