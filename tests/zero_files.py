"""DeepSpeed ZeRO checkpoints for the tests, written with ``torch.save`` exactly as
``engine.save_checkpoint`` lays them out and as DeepSpeed's ``zero_to_fp32.py`` reads them
(keys, flat fp32 partitions, alignment padding, stage 3's per-parameter split), without
needing DeepSpeed. DeepSpeed's own classes (``ZeroStageEnum``, ``LossScaler``) are pickled
under their real names from stand-in modules, so the files import what real ones import.

Where ``deepspeed`` is installed, ``test_layouts_zero.py`` also checks the reader against
checkpoints DeepSpeed itself saves (``save_real``) and its own ``zero_to_fp32``.
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

DS_VERSION = "0.16.4"
TAG = "global_step3"


@contextlib.contextmanager
def deepspeed_names():
    """``deepspeed.runtime.zero.config.ZeroStageEnum`` and
    ``deepspeed.runtime.fp16.loss_scaler.LossScaler`` importable by name while saving (or
    loading our own files in a reference), and gone after."""
    if "deepspeed" in sys.modules or _installed():
        yield
        return

    class ZeroStageEnum(enum.IntEnum):
        disabled = 0
        optimizer_states = 1
        gradients = 2
        weights = 3

    class LossScaler:
        def __init__(self, scale: float = 1.0):
            self.cur_scale = scale
            self.dynamic = False

    names = {"deepspeed.runtime.zero.config": {"ZeroStageEnum": ZeroStageEnum},
             "deepspeed.runtime.fp16.loss_scaler": {"LossScaler": LossScaler}}
    added = []
    for full in ["deepspeed", "deepspeed.runtime", "deepspeed.runtime.zero",
                 "deepspeed.runtime.fp16", *names]:
        mod = types.ModuleType(full)
        for attr, cls in names.get(full, {}).items():
            cls.__module__, cls.__qualname__ = full, attr
            setattr(mod, attr, cls)
        sys.modules[full] = mod
        added.append(full)
    try:
        yield
    finally:
        for full in added:
            sys.modules.pop(full, None)


def _installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def model_weights(torch) -> dict[str, Any]:
    """The model: trainable fp32 parameters of awkward sizes (in two groups), a frozen
    parameter, a float and an int buffer."""
    torch.manual_seed(0)
    return OrderedDict([
        ("embed.weight", torch.randn(7, 3)),
        ("norm.running", torch.randn(5)),  # buffer
        ("layer.weight", torch.randn(5, 7)),
        ("layer.bias", torch.randn(5)),
        ("frozen.weight", torch.randn(3, 2)),  # frozen
        ("head.weight", torch.randn(2, 5)),
        ("norm.count", torch.tensor(11, dtype=torch.int64)),  # buffer
        ("head.bias", torch.randn(1)),
    ])


BUFFERS = ("norm.running", "norm.count")
FROZEN = ("frozen.weight",)
GROUPS = (("embed.weight", "layer.weight"), ("layer.bias", "head.weight", "head.bias"))
SHARED = {"tied.weight": "embed.weight"}  # alias -> the parameter it is


def expected(torch, weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """What zero_to_fp32 gives for these weights (buffers as saved, not cast)."""
    weights = weights or model_weights(torch)
    out = dict(weights)
    out.update({alias: weights[name] for alias, name in SHARED.items()})
    return out


def _pad(flat, n: int):
    import torch

    return torch.cat([flat, torch.zeros(n - flat.numel(), dtype=flat.dtype)]) \
        if n > flat.numel() else flat


def save(torch, root: Path, stage: int, world: int, *, latest: bool = True,
         half=None, extra: dict[str, Any] | None = None) -> Path:
    """A checkpoint of :func:`model_weights` as ``world`` ranks at ZeRO ``stage`` would
    save it in ``root`` (``root/latest`` and ``root/TAG/``); returns ``root``. ``half``:
    the dtype of the module's copy (``None``: float32); ``extra``: client state added to the
    model states file(s)."""
    weights = model_weights(torch)
    half = half or torch.float32
    folder = root / TAG
    folder.mkdir(parents=True, exist_ok=True)
    if latest:
        (root / "latest").write_text(TAG)
    trainable = [n for g in GROUPS for n in g]
    shapes = [OrderedDict((n, weights[n].shape) for n in g) for g in GROUPS]
    config = {"train_batch_size": world, "zero_optimization": {"stage": stage},
              "bf16": {"enabled": half == torch.bfloat16}}
    with deepspeed_names():
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum

        if stage == 3:
            parts = _zero3_parts(torch, weights, world)
        else:
            parts = _zero12_parts(torch, weights, world)
        for r in range(world):
            osd: dict[str, Any] = {
                "zero_stage": ZeroStageEnum(stage), "loss_scaler": LossScaler(1.0),
                "dynamic_loss_scale": False, "overflow": False,
                "partition_count": world if stage == 3 else [world] * len(GROUPS)}
            base = {"state": {g: {"step": torch.tensor(3.0), "exp_avg": p * 0.1,
                                  "exp_avg_sq": p * p}
                              for g, p in enumerate(parts[r])},
                    "param_groups": [{"lr": 1e-3, "params": [g]} for g in range(len(GROUPS))]}
            if stage == 3:
                osd["optimizer_state_dict"] = base
                osd["fp32_flat_groups"] = parts[r]
            else:
                osd["base_optimizer_state"] = base
                osd["single_partition_of_fp32_groups"] = parts[r]
                osd["clip_grad"] = 1.0
            prefix = "bf16_" if half == torch.bfloat16 else ""
            torch.save({"optimizer_state_dict": osd, "ds_config": config,
                        "ds_version": DS_VERSION},
                       folder / f"{prefix}zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        for r in range(world if stage == 3 else 1):
            module = OrderedDict()
            for name, t in weights.items():
                if name in BUFFERS:
                    module[name] = t
                elif stage == 3:
                    module[name] = torch.empty(0, dtype=half)
                else:
                    module[name] = t.to(half)
            if stage == 3:
                frozen = OrderedDict((n, _zero3_piece(weights[n].to(half), world, r))
                                     for n in FROZEN)
                name = f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"
            else:
                frozen = OrderedDict((n, weights[n].to(half)) for n in FROZEN)
                name = "mp_rank_00_model_states.pt"
            state = {"module": module, "buffer_names": list(BUFFERS), "optimizer": None,
                     "param_shapes": shapes,
                     "frozen_param_shapes": OrderedDict((n, weights[n].shape) for n in FROZEN),
                     "shared_params": dict(SHARED), "frozen_param_fragments": frozen,
                     "lr_scheduler": {"last_epoch": 3, "_step_count": 4},
                     "data_sampler": None, "random_ltd": None,
                     "sparse_tensor_module_names": set(), "skipped_steps": 0,
                     "global_steps": 3, "global_samples": 3 * world, "dp_world_size": world,
                     "mp_world_size": 1, "ds_config": config, "ds_version": DS_VERSION,
                     "epoch": 1, **(extra or {})}
            assert len(trainable) == sum(len(s) for s in shapes)
            torch.save(state, folder / name)
    return root


def _zero12_parts(torch, weights, world: int) -> list[list[Any]]:
    """Each rank's partition of each group: the group's parameters flat, one after the
    other, padded to a multiple of 2 * world, cut in ``world`` equal parts."""
    out: list[list[Any]] = [[] for _ in range(world)]
    for group in GROUPS:
        flat = torch.cat([weights[n].reshape(-1).float() for n in group])
        align = 2 * world
        flat = _pad(flat, align * math.ceil(flat.numel() / align))
        size = flat.numel() // world
        for r in range(world):
            out[r].append(flat[r * size:(r + 1) * size].clone())
    return out


def _zero3_piece(t, world: int, r: int):
    per = math.ceil(t.numel() / world)
    return _pad(t.reshape(-1), per * world)[r * per:(r + 1) * per].clone()


def _zero3_parts(torch, weights, world: int) -> list[list[Any]]:
    """Each rank's flat group: its piece of every parameter of the group (each parameter
    padded to a multiple of ``world`` and cut in ``world`` equal pieces)."""
    return [[torch.cat([_zero3_piece(weights[n].float(), world, r) for n in group])
             for group in GROUPS] for r in range(world)]


# -- a reference consolidation, written from zero_to_fp32's algorithm ------------------------
def reference(torch, folder: Path) -> dict[str, Any]:
    """The consolidated state_dict of a tag folder of our own making, as ``zero_to_fp32``
    computes it (loads every file: our own, trusted here)."""
    import glob

    def load(path):
        with deepspeed_names():
            return torch.load(path, weights_only=False)

    optims = sorted(glob.glob(os.path.join(folder, "*_optim_states.pt")),
                    key=lambda p: int(p.split("zero_pp_rank_")[1].split("_")[0]))
    osds = [load(p)["optimizer_state_dict"] for p in optims]
    stage, world = int(osds[0]["zero_stage"]), osds[0]["partition_count"]
    world = max(world) if isinstance(world, list) else world
    models = sorted(glob.glob(os.path.join(folder, "*_model_states.pt")))
    states = [load(p) for p in models]
    main = states[0]
    out = {k: v for k, v in main["module"].items() if k in main["buffer_names"]}
    if stage <= 2:
        out.update(main["frozen_param_fragments"])
        for g, shapes in enumerate(main["param_shapes"]):
            full = torch.cat([o["single_partition_of_fp32_groups"][g] for o in osds])
            offset = 0
            for name, shape in shapes.items():
                out[name] = full.narrow(0, offset, shape.numel()).view(shape)
                offset += shape.numel()
    else:
        for name, shape in main["frozen_param_shapes"].items():
            frags = [s["frozen_param_fragments"][name] for s in states]
            out[name] = torch.cat(frags).narrow(0, 0, shape.numel()).view(shape)
        flats = [torch.cat(o["fp32_flat_groups"]) for o in osds]
        offset = 0
        for shapes in main["param_shapes"]:
            for name, shape in shapes.items():
                per = math.ceil(shape.numel() / world)
                pieces = [f.narrow(0, offset, per) for f in flats]
                out[name] = torch.cat(pieces).narrow(0, 0, shape.numel()).view(shape)
                offset += per
    for alias, name in main["shared_params"].items():
        out[alias] = out[name]
    return out


# -- real DeepSpeed, where it is installed ---------------------------------------------------
REAL = r'''
import os, sys, torch
import deepspeed
stage, out = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
class M(torch.nn.Module):
    def __init__(s):
        super().__init__()
        s.a = torch.nn.Linear(5, 3); s.b = torch.nn.Linear(3, 7); s.frozen = torch.nn.Linear(2, 3)
        s.frozen.requires_grad_(False)
        s.register_buffer("running", torch.arange(4.0))
    def forward(s, x): return s.b(s.a(x)).sum()
m = M()
cfg = {"train_batch_size": int(os.environ["WORLD_SIZE"]),
       "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}},
       "zero_optimization": {"stage": stage}, "bf16": {"enabled": True}}
eng, *_ = deepspeed.initialize(model=m, config=cfg,
                               model_parameters=[p for p in m.parameters() if p.requires_grad])
loss = eng(torch.randn(1, 5).to(torch.bfloat16)); eng.backward(loss); eng.step()
eng.save_checkpoint(out, client_state={"epoch": 3})
'''


def save_real(root: Path, stage: int, world: int, port: int) -> Path:
    """A checkpoint DeepSpeed itself saves: ``world`` CPU processes (gloo), one step of
    Adam at ZeRO ``stage``. Raises where DeepSpeed does not run here."""
    script = root / "ds_save.py"
    script.write_text(REAL)
    procs = []
    for r in range(world):
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(r),
               "LOCAL_RANK": str(r)}
        procs.append(subprocess.Popen([sys.executable, str(script), str(stage),
                                       str(root / "ckpt")], env=env, cwd=root,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError("DeepSpeed did not save:\n" + logs[0][-3000:])
    return root / "ckpt"
