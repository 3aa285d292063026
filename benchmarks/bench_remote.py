"""Checkpoints over HTTP from a loopback server (tests/rangeserver.py, which logs every
request), next to the same files opened locally: requests, bytes transferred, seconds.

    .venv/bin/python benchmarks/bench_remote.py [--repeat 3] [--keep DIR] [--only zip|shards]

(a) a 2 GiB ``torch.save`` zip of 800 float32 tensors: ``info --json URL`` against
    ``info --json FILE`` (budget: the structure in <= 2 MiB and <= 8 requests);
(b) the 100,000-tensor model in 160 safetensors shards of bench_shards.py: ``info --json``
    on its index URL against the local folder (budget: the index plus one or two requests
    per shard, issued concurrently);
(c) the same model in a repository of the fake Hub (tests/fakehub.py, HF_ENDPOINT):
    ``scan hf://bench/model`` (the whole structure read and checked) against a process that
    calls ``huggingface_hub.get_safetensors_metadata("bench/model")`` (target <= 1.0x);
    then the same model with 4 MiB of data added to each shard (as real shards, whose
    header is far from their end, where the zip check looks), on loopback and with each
    answer 20 or 50 ms late (a round trip to a server elsewhere).
Each is a whole process (Python start and imports included), warm page cache, median of
``--repeat``; the counts come from the server's log of the last run.
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
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from bench_shards import make_model  # noqa: E402

from rangeserver import RangeServer  # noqa: E402

MIB = 1 << 20


def make_zip(path: Path) -> None:
    """800 float32 tensors of 2.68 MB each: 2 GiB, written with torch.save."""
    import torch

    n = (2 << 30) // 800 // 4
    torch.save({f"layers.{i // 8}.w{i % 8}": torch.zeros(n) for i in range(800)}, path)


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - start


def side_by_side(label: str, local: str, served: Path, name: str, repeat: int) -> None:
    py = [sys.executable, "-m", "ckpt_inspector", "--no-cache", "info", "--json"]
    with RangeServer(served) as rs:
        url = rs.url(name)
        run([*py, url])
        run([*py, local])  # warm the page cache and the .pyc files
        times: dict[str, list[float]] = {"local": [], "remote": []}
        for _ in range(repeat):
            times["local"].append(run([*py, local]))
            rs.clear()
            times["remote"].append(run([*py, url]))
        log = rs.requests()
    med = statistics.median
    size = sum(f.stat().st_size for f in served.rglob("*") if f.is_file())
    print(f"\n{label} ({size / MIB:,.0f} MiB), median of {repeat}:")
    print(f"  info --json, local:          {med(times['local']):7.3f} s")
    print(f"  info --json, over HTTP:      {med(times['remote']):7.3f} s   "
          f"({med(times['remote']) / med(times['local']):.2f}x local)")
    sent = sum(r.sent for r in log)
    print(f"  requests: {len(log):,} ({len({r.port for r in log})} connections), "
          f"{sent / MIB:.2f} MiB transferred ({sent / size:.3%} of the bytes)")


HUB_METADATA = r'''
import sys
from huggingface_hub import get_safetensors_metadata
meta = get_safetensors_metadata(sys.argv[1])
print(sum(len(f.tensors) for f in meta.files_metadata.values()))
'''


def padded(src: Path, dst: Path, pad: int = 4 << 20) -> None:
    """The model of ``src`` with ``pad`` bytes of data added to each shard (one more tensor
    at its end), as real shards are: their header at the start, far from their last bytes."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    for shard in sorted(src.glob("*.safetensors")):
        part = load_file(str(shard))
        key = f"pad.{shard.stem}.weight"
        part[key] = np.zeros(pad // 4, np.float32)
        save_file(part, str(dst / shard.name), metadata={"format": "pt"})
        index["weight_map"][key] = shard.name
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(src / "config.json", dst / "config.json")


def against_the_hub(folder: Path, repeat: int, label: str = "the same model",
                    latency: float = 0.0) -> float:
    """``scan hf://bench/model`` against ``get_safetensors_metadata`` on the fake Hub
    serving ``folder``, each answer ``latency`` seconds late (a network's round trip);
    returns the ratio of their medians."""
    from fakehub import FakeHub, Repo

    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    repo = Repo(files, lfs={n for n in files if n.endswith(".safetensors")})
    with FakeHub({"bench/model": repo}, latency=latency) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0",
               "HF_HOME": tempfile.mkdtemp(), "HF_HUB_DISABLE_TELEMETRY": "1"}
        # scan: every shard's structure read and checked, the verdict printed (info --json
        # would add writing 41 MB of JSON, which get_safetensors_metadata does not do)
        ours = [sys.executable, "-m", "ckpt_inspector", "--no-cache", "scan",
                "hf://bench/model"]
        theirs = [sys.executable, "-c", HUB_METADATA, "bench/model"]
        times: dict[str, list[float]] = {"ours": [], "theirs": []}
        counts: dict[str, int] = {}
        sent: dict[str, int] = {}
        for cmd in (ours, theirs):  # warm up
            run(cmd, env)
        for _ in range(repeat):
            for name, cmd in (("ours", ours), ("theirs", theirs)):
                hub.clear()
                times[name].append(run(cmd, env))
                counts[name] = len(hub.requests())
                sent[name] = hub.bytes_sent()
    med = statistics.median
    size = sum(len(d) for d in files.values())
    where = f"answers {latency * 1000:.0f} ms late" if latency else "loopback, no delay"
    print(f"\n(c) {label} ({size / MIB:,.0f} MiB) on a fake Hub ({where}), median of "
          f"{repeat}:")
    for name, what in (("ours", "ckpt-inspector scan hf://bench/model:    "),
                       ("theirs", "huggingface_hub.get_safetensors_metadata:")):
        print(f"  {what} {med(times[name]):7.3f} s, {counts[name]} requests, "
              f"{sent[name] / MIB:.1f} MiB")
    ratio = med(times["ours"]) / med(times["theirs"])
    print(f"  ratio: {ratio:.2f}x   (target <= 1.0x)")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="write the files here and keep them (reused if present)")
    ap.add_argument("--only", choices=("zip", "shards"), help="(a) only, or (b) and (c)")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-remote-"))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "ckpt_inspector")],
                   check=True)
    try:
        if args.only != "shards":
            zdir = base / "zip"
            zdir.mkdir(parents=True, exist_ok=True)
            if not (zdir / "model.pt").exists():
                make_zip(zdir / "model.pt")
            side_by_side("(a) torch.save zip, 800 tensors", str(zdir / "model.pt"), zdir,
                         "model.pt", args.repeat)
        if args.only != "zip":
            mdir = base / "model"
            if not (mdir / "model.safetensors.index.json").exists():
                make_model(mdir, 100_000, 160)
            side_by_side("(b) 100,000 tensors in 160 safetensors shards", str(mdir), mdir,
                         "model.safetensors.index.json", args.repeat)
            against_the_hub(mdir, args.repeat)
            # shards as they really are: 4 MiB of data after each header (a probe of a
            # shard's end is no longer its whole file); on loopback, and with 20 ms answers
            big = base / "model-4mib"
            if not (big / "model.safetensors.index.json").exists():
                padded(mdir, big)
            for latency in (0.0, 0.02, 0.05):
                against_the_hub(big, args.repeat, "the model with 4 MiB of data per shard",
                                latency)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
