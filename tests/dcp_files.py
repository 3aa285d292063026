"""``torch.distributed.checkpoint`` folders for the tests, made with torch's own writer:
one process (``no_dist``) or two gloo processes saving row-sharded DTensors."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any


def state_dict(torch) -> dict[str, Any]:
    """A model, its Adam state after one step, and a step count."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    model[2].weight.data = model[2].weight.data.to(torch.float64)
    model[2].bias.data = model[2].bias.data.to(torch.float64)
    opt = torch.optim.Adam(model[0].parameters(), lr=0.01)
    model[0](torch.randn(2, 6)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optim": opt.state_dict(), "step": 7}


def save(torch, folder: Path, sd: dict[str, Any]) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "torch.distributed is disabled ... single process"
        warnings.simplefilter("ignore")
        dcp.save(sd, checkpoint_id=os.fspath(folder), no_dist=True)
    return folder


def consolidated(torch, folder: Path, out: Path) -> dict[str, Any]:
    """What torch's own consolidation makes of the folder, flattened to DCP's names."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(os.fspath(folder), os.fspath(out))
    return flatten(torch.load(out, weights_only=False))  # our own file


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(value, list) and prefix.endswith("param_groups."):
        out = {}
        for i, v in enumerate(value):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: value}


RANKS = r'''
import os, sys, warnings
import torch, torch.distributed as dist, torch.multiprocessing as mp
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

def run(rank, folder, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    torch.manual_seed(0)
    full = {"w": torch.arange(7 * 5, dtype=torch.float32).reshape(7, 5),
            "b": torch.randn(4, 3, dtype=torch.bfloat16), "v": torch.arange(9.0)}
    sd = {"model." + k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in full.items()}
    sd["model.replicated"] = torch.ones(2, 2)
    sd["step"] = 3
    dcp.save(sd, checkpoint_id=folder)
    dist.destroy_process_group()

if __name__ == "__main__":
    warnings.simplefilter("ignore")
    mp.start_processes(run, args=(sys.argv[1], sys.argv[2]), nprocs=2, start_method="fork")
'''


def save_two_ranks(folder: Path, port: int) -> None:
    """Two gloo processes on CPU, each saving its rows of DTensors sharded by rows."""
    proc = subprocess.run([sys.executable, "-c", RANKS, os.fspath(folder), str(port)],
                          capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
