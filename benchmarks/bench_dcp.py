"""Consolidating a 512 MiB ``torch.distributed.checkpoint`` folder: ``ckpt-inspector export``
against torch's own ``dcp_to_torch_save``.

    .venv/bin/python benchmarks/bench_dcp.py [--size-mb 512] [--tensors 32] [--repeat 3]

The checkpoint is saved by two gloo processes on CPU, every tensor a float32 DTensor
sharded by rows (``Shard(0)``), so each is stitched from two chunks in two ``.distcp``
files. Each contender runs as a whole process (Python start and imports included),
side by side in this one run, on the same folder with a warm page cache; the export is
read back and compared bit for bit as always (``--no-verify`` is timed too). It prints
wall-clock medians, the ratios, and each process's peak RSS.
Targets: export peak RSS <= 200 MB; export time <= 1.0x ``dcp_to_torch_save``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RANKS = r'''
import os, sys, warnings
import torch, torch.distributed as dist, torch.multiprocessing as mp
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

def run(rank, folder, port, size_mb, count):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    cols = 1024
    rows = int(size_mb) * 2**20 // int(count) // 4 // cols
    sd = {}
    for i in range(int(count)):
        g = torch.Generator().manual_seed(i)
        full = torch.rand(rows, cols, generator=g)
        sd[f"model.layers.{i}.weight"] = distribute_tensor(full, mesh, [Shard(0)])
    sd["step"] = 100
    dcp.save(sd, checkpoint_id=folder)
    dist.destroy_process_group()

if __name__ == "__main__":
    warnings.simplefilter("ignore")
    mp.start_processes(run, args=tuple(sys.argv[1:5]), nprocs=2, start_method="fork")
'''

CONSOLIDATE = ("import sys, warnings; warnings.simplefilter('ignore'); "
               "from torch.distributed.checkpoint.format_utils import dcp_to_torch_save; "
               "dcp_to_torch_save(sys.argv[1], sys.argv[2])")


def make_checkpoint(folder: Path, size_mb: int, count: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([sys.executable, "-c", RANKS, os.fspath(folder), str(port), str(size_mb),
                    str(count)], check=True, timeout=1200)


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one child process that must succeed."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {err}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--tensors", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpt-inspector-bench"))
    args = ap.parse_args()

    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"dcp_{args.size_mb}mb_{args.tensors}"
    if not (folder / ".metadata").exists():
        print(f"saving {folder} with 2 gloo ranks ...", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        make_checkpoint(folder, args.size_mb, args.tensors)
    size = sum(p.stat().st_size for p in folder.iterdir())
    out = root / "out"
    out.mkdir(exist_ok=True)
    py = sys.executable
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    export = [py, "-m", "ckpt_inspector", "export", os.fspath(folder), "--overwrite"]
    contenders = {
        "ckpt-inspector export --to safetensors": [
            *export, "--to", "safetensors", "-o", os.fspath(out / "model.safetensors")],
        "  same, --no-verify": [
            *export, "--to", "safetensors", "-o", os.fspath(out / "model.safetensors"),
            "--no-verify"],
        "ckpt-inspector export --to hf-sharded": [
            *export, "--to", "hf-sharded", "-o", os.fspath(out / "hf"),
            "--max-shard-size", "200MB"],
        "dcp_to_torch_save": [py, "-c", CONSOLIDATE, os.fspath(folder),
                              os.fspath(out / "torch.pt")],
        "python -c 'import torch' (floor)": [py, "-c", "import torch"],
    }
    run(contenders["dcp_to_torch_save"], env)  # warm the page cache
    results = {}
    for name, cmd in contenders.items():
        times, rss = [], []
        for _ in range(args.repeat):
            t, r = run(cmd, env)
            times.append(t)
            rss.append(r)
        results[name] = (statistics.median(times), max(rss))

    print(f"\ncheckpoint: {folder.name}, {size / 2**20:.0f} MiB in "
          f"{len(list(folder.glob('*.distcp')))} .distcp files, {args.tensors} row-sharded "
          f"float32 tensors, median of {args.repeat} runs, warm page cache\n")
    print(f"{'process':45s} {'seconds':>8s} {'peak RSS':>10s}")
    for name, (t, r) in results.items():
        print(f"{name:45s} {t:8.3f} {r:8.0f} MB")
    ours_t, ours_rss = results["ckpt-inspector export --to safetensors"]
    torch_t, torch_rss = results["dcp_to_torch_save"]
    print()
    print(f"export / dcp_to_torch_save time:  {ours_t / torch_t:.3f}x   (target <= 1.0x)")
    print(f"export peak RSS:                  {ours_rss:.0f} MB   (target <= 200 MB; "
          f"dcp_to_torch_save {torch_rss:.0f} MB)")


if __name__ == "__main__":
    main()
