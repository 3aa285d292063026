"""Hugging Face sharded checkpoints made in the test session (nothing binary is checked in).

``huggingface_hub.save_torch_state_dict`` writes them where it is installed; otherwise they
are written by hand the same way: ``PREFIX-0000K-of-0000N.EXT`` shards (safetensors with
``{"format": "pt"}`` metadata, or ``torch.save`` zips) and ``PREFIX.EXT.index.json`` with
``{"metadata": {"total_size": ...}, "weight_map": {key: shard}}``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def state_dict(torch, seed: int = 0) -> dict:
    """A small model's state_dict with float32, float16, bfloat16 and int64 tensors."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"model.layers.{i}.mlp.weight": torch.randn(8, 4, generator=g) for i in range(4)}
    sd["model.embed_tokens.weight"] = torch.randn(16, 4, generator=g).half()
    sd["model.norm.weight"] = torch.randn(4, generator=g).bfloat16()
    sd["model.positions"] = torch.arange(6)
    sd["lm_head.weight"] = torch.randn(16, 4, generator=g)
    return sd


def save_sharded(torch, folder: Path, sd: dict, ext: str = "safetensors", shards: int = 3,
                 prefix: str | None = None, index: bool = True) -> dict[str, str]:
    """Write ``sd`` as ``shards`` shards in ``folder``; returns the weight_map."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "toy", "hidden_size": 4, "num_hidden_layers": 4}))
    prefix = prefix or ("model" if ext == "safetensors" else "pytorch_model")
    try:
        from huggingface_hub import save_torch_state_dict, split_torch_state_dict_into_shards
    except ImportError:
        save_torch_state_dict = None
    if save_torch_state_dict is not None and index and prefix in ("model", "pytorch_model"):
        total = sum(t.numel() * t.element_size() for t in sd.values())
        # the shard size for which huggingface_hub's own split makes ``shards`` files
        sizes = [int(total * f / shards) + 1 for f in (1.0, 1.1, 1.2, 1.35, 1.5, 1.75)]
        size = next((m for m in sizes if len(split_torch_state_dict_into_shards(
            sd, max_shard_size=m).filename_to_tensors) == shards), None)
        if size is not None:
            save_torch_state_dict(sd, folder, safe_serialization=ext == "safetensors",
                                  max_shard_size=size)
        name = f"{prefix}.{ext}.index.json"
        if (folder / name).exists():
            return json.loads((folder / name).read_text())["weight_map"]
    keys = sorted(sd)
    per = -(-len(keys) // shards)
    weight_map: dict[str, str] = {}
    for k in range(shards):
        name = f"{prefix}-{k + 1:05d}-of-{shards:05d}.{ext}"
        part = {key: sd[key].contiguous() for key in keys[k * per:(k + 1) * per]}
        if ext == "safetensors":
            from safetensors.torch import save_file

            save_file(part, folder / name, metadata={"format": "pt"})
        else:
            torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    if index:
        total = sum(t.numel() * t.element_size() for t in sd.values())
        (folder / f"{prefix}.{ext}.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return weight_map


def marker_payload(torch, shard: Path, marker: Path) -> None:
    """Replace a ``.bin`` shard by one whose unpickling runs ``touch marker``."""
    from support import Payload

    sd = torch.load(shard, weights_only=True)
    sd["model.extra"] = Payload(f"touch {os.fspath(marker)}")
    torch.save(sd, shard)
