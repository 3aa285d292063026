"""LoRA adapters: which tensors are the halves of a pair, the rank, alpha and scale of each
adapted module, and its effective update ``scale · B @ A`` as a tensor computed when read.

- :func:`find_adapter` (``build``): a :class:`Checkpoint`'s :class:`Adapter`, or None;
- ``pairs``: the key namings (PEFT, kohya / sd-scripts, diffusers);
- ``model``: :class:`Adapter`, :class:`AdaptedModule`, their JSON, :func:`module_groups`;
- ``update``: :func:`~ckpt_inspector.core.adapters.update.update_tensor`, ``prepare``,
  ``is_update`` (numpy: imported from there, so that ``info`` and ``scan`` import no numpy);
- ``text``: the lines ``info`` prints.

Qt-free, torch-free; nothing from the file runs.
"""

from __future__ import annotations

from ckpt_inspector.core.adapters.build import find_adapter
from ckpt_inspector.core.adapters.model import (
    AdaptedModule,
    Adapter,
    ModuleGroup,
    module_groups,
    short,
)

__all__ = ["AdaptedModule", "Adapter", "ModuleGroup", "find_adapter", "module_groups", "short"]
