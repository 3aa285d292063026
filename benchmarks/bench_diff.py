"""``ckpt-inspector diff`` of two ~2 GB checkpoints that differ in one tensor, side by side
with reading both files once and with ``torch.load`` of both plus a loop of ``torch.equal``.

    .venv/bin/python benchmarks/bench_diff.py [--size-mb 2048] [--tensors 800] [--repeat 3]

Each contender is a whole process (Python start and imports included), on the same two
files with a warm page cache; the script prints wall-clock medians, peak RSS and ratios.
Target: the diff in about the time of reading both files once, memory bounded (as for
statistics: tens of MB, not the files' size).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_info import run_status  # noqa: E402  (the same measurement of a child process)

READ_BOTH = """
import sys
buf = bytearray(16 << 20)
view = memoryview(buf)
for path in sys.argv[1:]:
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
"""

TORCH_EQUAL = """
import sys, torch
a = torch.load(sys.argv[1], weights_only=True)["model"]
b = torch.load(sys.argv[2], weights_only=True)["model"]
same = sum(1 for k in a if k in b and a[k].shape == b[k].shape and torch.equal(a[k], b[k]))
print(same, "of", len(a), "equal")
"""

CHANGE_ONE = """
import sys, torch
ckpt = torch.load(sys.argv[1], mmap=True, weights_only=True)
key = sorted(ckpt["model"])[len(ckpt["model"]) // 2]
ckpt["model"][key] = ckpt["model"][key].clone()
ckpt["model"][key][0, 0] += 1.0
torch.save(ckpt, sys.argv[2])
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--tensors", type=int, default=800)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpt-inspector-bench"))
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    a = folder / f"bench_{args.size_mb}mb_{args.tensors}.pt"
    b = folder / f"bench_{args.size_mb}mb_{args.tensors}_one_changed.pt"
    py = sys.executable
    if not a.exists():
        print(f"writing {a} ...", flush=True)
        subprocess.run([py, str(HERE / "bench_info.py"), "--make", str(a), "--size-mb",
                        str(args.size_mb), "--tensors", str(args.tensors)], check=True)
    if not b.exists():
        print(f"writing {b} ...", flush=True)
        subprocess.run([py, "-c", CHANGE_ONE, str(a), str(b)], check=True)
    contenders = {
        "read both files once (16 MiB reads)": [py, "-c", READ_BOTH, str(a), str(b)],
        "ckpt-inspector diff --json": [py, "-m", "ckpt_inspector", "diff", "--json",
                                       str(a), str(b)],
        "torch.load both + torch.equal loop": [py, "-c", TORCH_EQUAL, str(a), str(b)],
    }
    run_status(contenders["read both files once (16 MiB reads)"])  # warm the page cache
    results = {}
    for name, cmd in contenders.items():
        runs = [run_status(cmd, ok=(0, 1)) for _ in range(args.repeat)]
        results[name] = (statistics.median(r[0] for r in runs), max(r[1] for r in runs),
                         runs[0][2])
    size = (a.stat().st_size + b.stat().st_size) / 2**30
    print(f"\ntwo files of {size / 2:.2f} GiB ({args.tensors} float32 tensors each, one "
          f"element of one tensor changed), warm page cache, median of {args.repeat}\n")
    for name, (t, rss, code) in results.items():
        print(f"{name:38s} {t:7.3f} s   peak RSS {rss:7.0f} MB   exit {code}")
    read = results["read both files once (16 MiB reads)"][0]
    ours = results["ckpt-inspector diff --json"][0]
    torch_t = results["torch.load both + torch.equal loop"][0]
    print(f"\ndiff / reading both files once: {ours / read:.2f}x (target: about 1x)")
    print(f"diff / torch.load both + torch.equal: {ours / torch_t:.2f}x")


if __name__ == "__main__":
    main()
