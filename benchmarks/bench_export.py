"""Export the 2 GiB / 800-tensor checkpoint to safetensors and .pt, against torch.

    .venv/bin/python benchmarks/bench_export.py [--repeat 2]

Side by side in one run, each as a whole process with a warm page cache:
``ckpt-inspector export --to safetensors`` and ``--to state_dict`` (with and without
the read-back verification), against the script people write: ``torch.load`` then
``safetensors.torch.save_file`` (and ``torch.save``). Prints seconds, peak RSS and
the ratios. Targets: <= 1.0x the script's time, <= 0.5x its peak memory.
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

from bench_info import run  # noqa: E402 - the same timing and peak-RSS helper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpt-inspector-bench"))
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "bench_2048mb_800.pt"
    if not src.exists():
        subprocess.run([sys.executable, str(HERE / "bench_info.py"), "--make", str(src)],
                       check=True)
    out = folder / "out"
    out.mkdir(exist_ok=True)
    py = sys.executable
    torch_st = (f"import torch; from safetensors.torch import save_file; "
                f"sd = torch.load({str(src)!r}, weights_only=True)['model']; "
                f"save_file(sd, {str(out / 'torch.safetensors')!r})")
    torch_pt = (f"import torch; sd = torch.load({str(src)!r}, weights_only=True)['model']; "
                f"torch.save(sd, {str(out / 'torch.pt')!r})")

    def ours(to: str, name: str, verify: bool) -> list[str]:
        cmd = [py, "-m", "ckpt_inspector", "export", str(src), "--to", to, "-o",
               str(out / name), "--key", "model", "--overwrite", "--json"]
        return cmd if verify else [*cmd, "--no-verify"]

    contenders = {
        "torch.load + safetensors save_file": [py, "-c", torch_st],
        "ckpt-inspector export --to safetensors": ours("safetensors", "ours.safetensors", False),
        "  ... with read-back verification": ours("safetensors", "ours_v.safetensors", True),
        "torch.load + torch.save": [py, "-c", torch_pt],
        "ckpt-inspector export --to state_dict": ours("state_dict", "ours.pt", False),
        "  ... with verification + torch.load check": ours("state_dict", "ours_v.pt", True),
    }
    run(contenders["torch.load + safetensors save_file"])  # warm the page cache
    results = {}
    for name, cmd in contenders.items():
        times, peaks = [], []
        for _ in range(args.repeat):
            t, r = run(cmd)
            times.append(t)
            peaks.append(r)
        results[name] = (statistics.median(times), max(peaks))
    print(f"\n{src.name}, {src.stat().st_size / 2**30:.2f} GiB, median of {args.repeat}\n")
    print(f"{'process':46s} {'seconds':>8s} {'peak RSS':>10s}")
    for name, (t, r) in results.items():
        print(f"{name:46s} {t:8.2f} {r:8.0f} MB")
    for fmt, base, mine in (("safetensors", "torch.load + safetensors save_file",
                             "ckpt-inspector export --to safetensors"),
                            (".pt", "torch.load + torch.save",
                             "ckpt-inspector export --to state_dict")):
        (bt, br), (mt, mr) = results[base], results[mine]
        print(f"{fmt:12s} time {mt / bt:.2f}x (target <= 1.0x)   "
              f"peak memory {mr / br:.2f}x (target <= 0.5x)")


if __name__ == "__main__":
    main()
