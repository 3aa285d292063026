"""``ckpt-inspector info`` / ``scan`` against ``joblib.load`` on joblib files, plain and
compressed, side by side in one run.

    .venv/bin/python benchmarks/bench_joblib.py [--size-mb 512] [--arrays 200] [--repeat 3]

A dict of float32 arrays (and one object array of strings, as scikit-learn models hold)
is written with ``joblib.dump`` three ways: plain, zlib (``compress=3``) and gzip. Each
contender runs as a whole process, on a warm page cache; the script prints wall-clock
medians, the ratios and each process's peak RSS. ckpt-inspector reads a plain file's arrays
in place (their bytes stay in the file) and unpacks a compressed one once into memory
(at most 256 MiB: larger ones are scanned up to there); joblib.load builds every array.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_info import run, run_status


def make(path: Path, size_mb: int, count: int, compress: object) -> None:
    import joblib
    import numpy as np

    per = size_mb * 2**20 // count // 4
    rng = np.random.default_rng(0)
    obj = {f"layer{i}": rng.random(per, dtype=np.float32) for i in range(count)}
    obj["classes_"] = np.array([f"class{i}" for i in range(100)], dtype=object)
    joblib.dump(obj, path, compress=compress)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--arrays", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpt-inspector-bench"))
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "ckpt_inspector"]
    load = [sys.executable, "-c", "import sys, joblib; joblib.load(sys.argv[1])"]
    print(f"{args.size_mb} MB in {args.arrays} arrays; medians of {args.repeat}")
    print(f"{'file':<10} {'joblib.load':>14} {'info':>14} {'scan':>14} {'info/load':>10}")
    for name, compress in (("plain", 0), ("zlib", 3), ("gzip", ("gzip", 3))):
        path = folder / f"bench_{args.size_mb}mb_{name}.joblib"
        if not path.exists():  # in a child: a child's peak RSS starts at its parent's
            code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    f"import bench_joblib as b; from pathlib import Path; "
                    f"b.make(Path({str(path)!r}), {args.size_mb}, {args.arrays}, "
                    f"{compress!r})")
            run([sys.executable, "-c", code])
        times: dict[str, list[tuple[float, float]]] = {"load": [], "info": [], "scan": []}
        run([*load, str(path)])  # warm the page cache
        for _ in range(args.repeat):
            times["load"].append(run([*load, str(path)]))
            times["info"].append(run([*exe, "info", "--json", str(path)]))
            # scan exits 1 for needs-trust (numpy's dtype): not a failure here
            times["scan"].append(run_status([*exe, "scan", str(path)], ok=(0, 1))[:2])
        med = {k: (statistics.median(t for t, _ in v), max(r for _, r in v))
               for k, v in times.items()}
        cell = {k: f"{t:.2f} s {r:.0f} MB" for k, (t, r) in med.items()}
        print(f"{name:<10} {cell['load']:>14} {cell['info']:>14} {cell['scan']:>14} "
              f"{med['info'][0] / med['load'][0]:>9.2f}x")


if __name__ == "__main__":
    main()
