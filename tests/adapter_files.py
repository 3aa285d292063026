"""LoRA adapters written in the test session, as their tools write them.

- :func:`peft_by_hand`: what PEFT's ``save_pretrained`` writes (``adapter_config.json`` and
  ``adapter_model.safetensors`` through ``safetensors.torch.save_file``, keys
  ``base_model.model.<module>.lora_A.weight``), without PEFT: the tests that need no PEFT
  use it; those in ``test_adapters.py`` check the same against PEFT itself where it is
  installed.
- :func:`kohya_file`: a kohya / sd-scripts LoRA (``lora_unet_…​.lora_down.weight``,
  ``.lora_up.weight``, ``.alpha`` scalar tensors, ``ss_*`` metadata, every value a string).

Each returns the arrays written (float64 copies, for references computed with numpy).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

PREFIX = "base_model.model."
# module -> (in, out, kind); the rank comes from the config (rank_pattern for one of them)
PEFT_MODULES = {
    "model.layers.0.self_attn.q_proj": (24, 32, "linear"),
    "model.layers.0.self_attn.v_proj": (24, 16, "linear"),
    "model.layers.1.self_attn.q_proj": (24, 32, "linear"),
    "model.layers.1.self_attn.v_proj": (24, 16, "linear"),
    "model.layers.2.self_attn.q_proj": (24, 32, "linear"),
    "model.layers.2.self_attn.v_proj": (24, 16, "linear"),
    "model.conv": (3, 6, "conv"),  # a 3×3 Conv2d
    "model.embed_tokens": (50, 24, "embedding"),  # num_embeddings, embedding_dim
}
PEFT_CONFIG = {
    "peft_type": "LORA", "base_model_name_or_path": "toy/base-model", "task_type": "CAUSAL_LM",
    "r": 4, "lora_alpha": 8, "use_rslora": False, "fan_in_fan_out": False,
    "target_modules": ["q_proj", "v_proj", "conv", "embed_tokens"],
    # PEFT's patterns: re.match(rf"(.*\.)?({pattern})$", name)
    "rank_pattern": {"layers.1.self_attn.q_proj": 2},
    "alpha_pattern": {"v_proj": 2},
    "modules_to_save": ["lm_head"], "bias": "none", "peft_version": "0.13.0",
}


def expected_peft(config: dict[str, Any] = PEFT_CONFIG) -> dict[str, tuple[int, float, float]]:
    """module (as the file names it) -> (rank, alpha, scale), worked out by hand."""
    out = {}
    for name in PEFT_MODULES:
        r = 2 if name == "model.layers.1.self_attn.q_proj" else config["r"]
        alpha = 2 if name.endswith("v_proj") else config["lora_alpha"]
        scale = alpha / (r ** 0.5 if config.get("use_rslora") else r)
        out[PREFIX + name] = (r, alpha, scale)
    return out


def peft_tensors(torch, config: dict[str, Any] = PEFT_CONFIG, dtype: Any = None
                 ) -> dict[str, Any]:
    """The state_dict PEFT saves for :data:`PEFT_MODULES` (random, B not zero)."""
    g = torch.Generator().manual_seed(7)
    sd = {}
    for name, (fan_in, fan_out, kind) in PEFT_MODULES.items():
        r = expected_peft(config)[PREFIX + name][0]
        key = PREFIX + name
        if kind == "embedding":
            sd[f"{key}.lora_embedding_A"] = torch.randn(r, fan_in, generator=g)
            sd[f"{key}.lora_embedding_B"] = torch.randn(fan_out, r, generator=g)
        elif kind == "conv":
            sd[f"{key}.lora_A.weight"] = torch.randn(r, fan_in, 3, 3, generator=g)
            sd[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, 1, 1, generator=g)
        else:
            sd[f"{key}.lora_A.weight"] = torch.randn(r, fan_in, generator=g)
            sd[f"{key}.lora_B.weight"] = torch.randn(fan_out, r, generator=g)
    sd[PREFIX + "lm_head.weight"] = torch.randn(50, 24, generator=g)  # modules_to_save
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    return sd


def peft_by_hand(torch, folder: Path, config: dict[str, Any] = PEFT_CONFIG,
                 dtype: Any = None, fmt: str = "safetensors") -> dict[str, np.ndarray]:
    """Write an adapter folder as PEFT does; returns its tensors as float64 arrays."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = peft_tensors(torch, config, dtype)
    if fmt == "safetensors":
        save_file(sd, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, folder / "adapter_model.bin")
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return {k: v.double().numpy() for k, v in sd.items()}


def update_of(arrays: dict[str, np.ndarray], module: str, scale: float) -> np.ndarray:
    """``scale · B @ A`` of a module, with numpy in float64, shaped as the layer's weight:
    ``[out, in, *kernel]``, or ``[num, dim]`` for an embedding."""
    if f"{module}.lora_embedding_A" in arrays:
        a, b = arrays[f"{module}.lora_embedding_A"], arrays[f"{module}.lora_embedding_B"]
        return scale * (b @ a).T
    names = [(f"{module}.lora_A.weight", f"{module}.lora_B.weight"),
             (f"{module}.lora_down.weight", f"{module}.lora_up.weight")]
    ka, kb = next(n for n in names if n[0] in arrays)
    a, b = arrays[ka], arrays[kb]
    r = a.shape[0]
    return (scale * (b.reshape(-1, r) @ a.reshape(r, -1))).reshape(b.shape[0], *a.shape[1:])


# -- kohya / sd-scripts ----------------------------------------------------------------------
KOHYA_METADATA = {
    "ss_network_module": "networks.lora", "ss_network_dim": "8", "ss_network_alpha": "2.0",
    "ss_network_args": json.dumps({"conv_dim": "4", "conv_alpha": "1"}),
    "ss_sd_model_name": "v1-5-pruned-emaonly.safetensors", "ss_base_model_version": "sd_v1",
}
# module -> (down shape, up shape, alpha tensor or None) and the alpha / scale expected
KOHYA_MODULES = {
    # an alpha tensor, float16 as kohya saves it with --save_precision fp16
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q":
        ((8, 40), (40, 8), 4.0, 4.0, 0.5),
    # a 3×3 convolution without an alpha tensor: ss_network_args' conv_alpha
    "lora_unet_down_blocks_0_resnets_0_conv1": ((4, 12, 3, 3), (12, 4, 1, 1), None, 1.0, 0.25),
    # a linear layer without one: ss_network_alpha
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": ((8, 20), (20, 8), None, 2.0, 0.25),
    # a 1×1 convolution with an alpha tensor
    "lora_unet_down_blocks_0_attentions_0_proj_in": ((8, 12, 1, 1), (12, 8, 1, 1), 8.0, 8.0, 1.0),
}


def kohya_file(torch, path: Path, dtype: Any = None, metadata: dict[str, str] | None = None
               ) -> dict[str, np.ndarray]:
    """A kohya LoRA file (``dtype``: the weights' dtype, float16 by default as kohya saves
    them); returns its tensors as float64 arrays."""
    from safetensors.torch import save_file

    dtype = dtype or torch.float16
    g = torch.Generator().manual_seed(11)
    sd = {}
    for name, (down, up, alpha, _a, _s) in KOHYA_MODULES.items():
        sd[f"{name}.lora_down.weight"] = torch.randn(*down, generator=g).to(dtype)
        sd[f"{name}.lora_up.weight"] = torch.randn(*up, generator=g).to(dtype)
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    save_file(sd, str(path), metadata=KOHYA_METADATA if metadata is None else metadata)
    return {k: v.double().numpy() for k, v in sd.items()}
