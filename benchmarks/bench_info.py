"""``ckpt-inspector info --json`` against ``torch.load`` on a ~2 GB checkpoint of 800 tensors.

    .venv/bin/python benchmarks/bench_info.py [--size-mb 2048] [--tensors 800] [--repeat 3]

Each contender runs as a whole process (Python start and imports included),
side by side in this one run, on the same file with a warm page cache. It
prints wall-clock medians, the ratios, and each process's peak RSS.
Targets: info <= 0.2x the ``torch.load(mmap=True)`` process; info peak RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_checkpoint(path: Path, size_mb: int, count: int) -> None:
    import torch

    per = size_mb * 2**20 // count // 4  # float32 elements per tensor
    side = int(per**0.5)
    sd = {}
    for i in range(count):
        sd[f"layers.{i // 8}.block{i % 8}.weight"] = torch.empty(side, per // side).uniform_()
    torch.save({"model": sd, "epoch": 3, "lr": 1e-4}, path)


def run_status(cmd: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, float, int]:
    """(seconds, peak RSS in MB, exit status) of one child process; an exit status not in
    ``ok`` stops the benchmark with the child's stderr."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if code not in ok:
        raise SystemExit(f"{cmd} failed ({code}): {err}")
    return elapsed, usage.ru_maxrss / 1024, code


def run(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one child process that must succeed."""
    elapsed, rss, _ = run_status(cmd)
    return elapsed, rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--tensors", type=int, default=800)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpt-inspector-bench"))
    ap.add_argument("--make", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        make_checkpoint(Path(args.make), args.size_mb, args.tensors)
        return

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench_{args.size_mb}mb_{args.tensors}.pt"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        # in a child, so this process stays small: children inherit its RSS at fork
        subprocess.run([sys.executable, __file__, "--make", str(path), "--size-mb",
                        str(args.size_mb), "--tensors", str(args.tensors)], check=True)
    size = path.stat().st_size
    py = sys.executable
    contenders = {
        "ckpt-inspector info --json": [py, "-m", "ckpt_inspector", "info", str(path), "--json"],
        "torch.load(mmap=True, weights_only=True)": [
            py, "-c", f"import torch; torch.load({str(path)!r}, mmap=True, weights_only=True)"],
        "torch.load(weights_only=True)": [
            py, "-c", f"import torch; torch.load({str(path)!r}, weights_only=True)"],
        "python -c 'import torch' (floor)": [py, "-c", "import torch"],
    }
    run(contenders["torch.load(weights_only=True)"])  # warm the page cache
    results = {}
    for name, cmd in contenders.items():
        times, rss = [], []
        for _ in range(args.repeat):
            t, r = run(cmd)
            times.append(t)
            rss.append(r)
        results[name] = (statistics.median(times), max(rss))

    print(f"\nfile: {path.name}, {size / 2**30:.2f} GiB, {args.tensors} tensors, "
          f"median of {args.repeat} runs, warm page cache\n")
    print(f"{'process':45s} {'seconds':>8s} {'peak RSS':>10s}")
    for name, (t, r) in results.items():
        print(f"{name:45s} {t:8.3f} {r:8.0f} MB")
    info_t, info_rss = results["ckpt-inspector info --json"]
    mmap_t = results["torch.load(mmap=True, weights_only=True)"][0]
    full_t = results["torch.load(weights_only=True)"][0]
    print()
    print(f"info / torch.load(mmap=True):  {info_t / mmap_t:.3f}x   (target <= 0.2x)")
    print(f"info / torch.load():           {info_t / full_t:.3f}x")
    print(f"info peak RSS:                 {info_rss:.0f} MB   (target <= 150 MB)")


if __name__ == "__main__":
    main()
