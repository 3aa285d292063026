"""A sharded Hugging Face model of 100,000 tensors in 160 safetensors shards: ``info --json``
against safetensors' own reader, and the window opening it.

    .venv/bin/python benchmarks/bench_shards.py [--repeat 5] [--tensors 100000] [--shards 160]
        [--only cli|gui] [--platform offscreen] [--keep DIR]

The model is written in this run (``safetensors.numpy.save_file`` per shard and a
``model.safetensors.index.json`` as ``huggingface_hub`` writes it; small float32 / float16
tensors) in a temporary folder. Each contender runs as a whole process (Python start and
imports included), side by side in this one run, warm page cache, median of ``--repeat``:

(a) ``ckpt-inspector info --json FOLDER > /dev/null``
(b) ``python -c`` that opens every shard with ``safetensors.safe_open(framework="np")`` and
    lists its keys and shapes (``get_slice(k).get_shape()``)
(c) the window: from launching ``ckpt-inspector FOLDER`` to the tree shown (cold start), and,
    in a running window, open to tree and the longest event-loop stall (a 2 ms heartbeat).

Targets: (a) / (b) <= 1.0x; (c) <= 1.5 s from launch, no stall over 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def make_model(folder: Path, tensors: int, shards: int) -> None:
    """``tensors`` small tensors of a llama-like naming in ``shards`` safetensors shards and
    the index that names them."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    per_layer = 10
    names = [f"model.layers.{i // per_layer}.sub{i % per_layer}.weight"
             for i in range(tensors)]
    per = -(-tensors // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for k in range(shards):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {}
        for j, key in enumerate(names[k * per:(k + 1) * per]):
            arr = (np.zeros((8, 4), np.float32) if j % 3 else np.zeros(16, np.float16))
            part[key] = arr
            total += arr.nbytes
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "toy", "num_hidden_layers": tensors // per_layer}))


SAFE_OPEN = r'''
import glob, os, sys
from safetensors import safe_open
n = 0
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.safetensors"))):
    with safe_open(path, framework="np") as f:
        for k in f.keys():
            f.get_slice(k).get_shape()
            n += 1
print(n)
'''


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed: {err}")
    return elapsed, usage.ru_utime + usage.ru_stime


def cold_start(folder: Path, platform: str) -> float:
    env = {**os.environ, "QT_QPA_PLATFORM": platform, "CKPT_INSPECTOR_EXIT_WHEN_SHOWN": "1",
           "XDG_CONFIG_HOME": tempfile.mkdtemp()}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "ckpt_inspector", str(folder)], env=env,
                          capture_output=True, text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("shown ")), None)
    if line is None:
        raise SystemExit(f"the window did not show {folder}: {proc.stderr[-2000:]}")
    return float(line.split()[1]) - start


WAIT_FOR_PRELOAD = """
from ckpt_inspector.gui.tensor.preload import _PRELOAD
def wait_preload():
    QTimer.singleShot(300, start_next) if _PRELOAD["done"] else QTimer.singleShot(50, wait_preload)
QTimer.singleShot(500, wait_preload)
"""


def in_window(folder: Path, platform: str, repeat: int) -> dict:
    """Open to tree and the longest stall, in a running window (bench_gui.py's harness)."""
    sys.path.insert(0, str(HERE))
    from bench_gui import HARNESS

    # the window imports pyqtgraph on a worker once it is up (half a second that stalls
    # the GUI thread now and then, whatever is open): start once that is over, so the
    # stalls measured are those of opening the folder
    first = "QTimer.singleShot(500, start_next)"
    assert first in HARNESS
    harness = HARNESS.replace(first, WAIT_FOR_PRELOAD)
    env = {**os.environ, "QT_QPA_PLATFORM": platform}
    proc = subprocess.run([sys.executable, "-c", harness, str(folder), str(repeat)],
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])[str(folder)]


def command_line(folder: Path, repeat: int, env: dict[str, str]) -> None:
    """(a) against (b), whole processes, interleaved so a busy moment hits both alike."""
    py = sys.executable
    contenders = {
        "(a) ckpt-inspector info --json": [py, "-m", "ckpt_inspector", "info", "--json",
                                           str(folder)],
        "(b) safetensors.safe_open, keys + shapes": [py, "-c", SAFE_OPEN, str(folder)],
        "python -c pass (floor)": [py, "-c", "pass"],
    }
    for cmd in contenders.values():  # warm the page cache and the .pyc files
        timed(cmd, env)
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, cmd in contenders.items():
            w, c = timed(cmd, env)
            wall[name].append(w)
            cpu[name].append(c)
    med = statistics.median
    print(f"\n{'process':45s} {'wall s':>8s} {'CPU s':>8s}   (median of {repeat}, warm cache)")
    for name in contenders:
        print(f"{name:45s} {med(wall[name]):8.3f} {med(cpu[name]):8.3f}")
    a, b = "(a) ckpt-inspector info --json", "(b) safetensors.safe_open, keys + shapes"
    print(f"\ninfo --json / safe_open:  {med(wall[a]) / med(wall[b]):.2f}x wall, "
          f"{med(cpu[a]) / med(cpu[b]):.2f}x CPU   (target <= 1.0x)")


def window(folder: Path, repeat: int, platform: str) -> None:
    med = statistics.median
    cold = [cold_start(folder, platform) for _ in range(repeat)]
    r = in_window(folder, platform, repeat)
    print(f"\nthe window (Qt platform {platform}), median of {repeat}:")
    print(f"  launch to tree shown:        {med(cold):.3f} s   (target <= 1.5 s)")
    print(f"  open to tree (running app):  {med(r['open']):.3f} s")
    print(f"  longest event-loop stall:    {max(r['stall']):.0f} ms   (target <= 50 ms; each "
          f"open: {', '.join(f'{x:.0f}' for x in r['stall'])} ms)")
    print(f"  filter 'sub3' to shown:      {med(r['filter']) * 1000:.0f} ms, longest stall "
          f"{max(r['filter_stall']):.0f} ms")
    print(f"  sort by key (GUI thread):    {med(r['sort']) * 1000:.0f} ms, longest stall "
          f"{max(r['sort_stall']):.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--tensors", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=160)
    ap.add_argument("--platform", default="offscreen")
    ap.add_argument("--only", choices=("cli", "gui"), help="only (a)+(b), or only (c)")
    ap.add_argument("--keep", help="write the model here and keep it (reused if present)")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        folder = Path(args.keep)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-shards-")
        folder = Path(tmp) / "model"
    try:
        if not (folder / "model.safetensors.index.json").exists():
            t = time.perf_counter()
            make_model(folder, args.tensors, args.shards)
            print(f"wrote {args.tensors:,} tensors in {args.shards} shards to {folder} "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)
        print(f"{args.tensors:,} tensors in {args.shards} safetensors shards + index")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        # an installed package runs from its .pyc files; where PYTHONDONTWRITEBYTECODE is
        # set (some CI images) every run would compile the project's source again
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "ckpt_inspector")],
                       check=True)
        if args.only != "gui":
            command_line(folder, args.repeat, dict(os.environ))
        if args.only != "cli":
            window(folder, args.repeat, args.platform)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
