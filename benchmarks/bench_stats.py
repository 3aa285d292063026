"""Statistics of a 1 GiB float32 tensor against one numpy.sum pass over the same data.

    .venv/bin/python benchmarks/bench_stats.py [--repeat 3]

The tensor is saved with torch.save; numpy.sum runs over an np.memmap of its storage
record (the same bytes, page cache warm for both). Statistics and the histogram run
in a child process that reports its peak RSS above its RSS before the computation.
Targets: statistics <= 8x the numpy.sum pass, extra memory <= 64 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.stats import compute, histogram
from ckpt_inspector.core.tree import key_of

def drive(g):
    while True:
        try:
            next(g)
        except StopIteration as s:
            return s.value

path, mode = sys.argv[1], sys.argv[2]
info = next(n.tensor for p, n in open_checkpoint(path).tensors())
src = info.storage.source
span = src.file_span()
mm = np.memmap(span[0], dtype="<f4", mode="r", offset=span[1], shape=(info.numel,))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "numpy.sum":
    float(mm.sum())
elif mode == "stats":
    drive(compute(info))
else:
    drive(histogram(info, drive(compute(info)), bins=100))
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "extra_mb": (peak - before) / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpt-inspector-bench"))
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "one_gib_float32.pt"
    if not path.exists():
        code = ("import torch; torch.manual_seed(0); "
                f"torch.save(torch.randn(256 * 1024 * 1024), {str(path)!r})")
        subprocess.run([sys.executable, "-c", code], check=True)
    results = {}
    for mode in ("numpy.sum", "stats", "stats + histogram"):
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], check=True,
                                 capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        results[mode] = (statistics.median(r["seconds"] for r in runs),
                         max(r["extra_mb"] for r in runs))
    print(f"\n{path.name}: 1 GiB float32 ({256 * 1024 * 1024:,} elements), median of "
          f"{args.repeat}, warm page cache\n")
    for mode, (t, mb) in results.items():
        print(f"{mode:20s} {t:7.3f} s   extra memory {mb:6.1f} MB")
    base = results["numpy.sum"][0]
    print(f"\nstatistics / numpy.sum: {results['stats'][0] / base:.2f}x (target <= 8x); "
          f"extra memory {results['stats'][1]:.1f} MB (target <= 64 MB)")


if __name__ == "__main__":
    main()
