"""Start-up, open and event-loop stalls of the desktop app.

    .venv/bin/python benchmarks/bench_gui.py [--platform offscreen|xcb] [--repeat 3]
    .venv/bin/python benchmarks/bench_gui.py --million [--stalls 100]

Measures, side by side in one run, on the 2 GiB / 800-tensor checkpoint that
bench_info.py writes (made here if missing) and on a 100,000-tensor state_dict:

- cold start: from spawning ``ckpt-inspector FILE`` to the window showing its tree;
- open to tree: ``open_paths`` in a running app until the tree is on screen;
- longest stall of the GUI event loop while a file opens (a 2 ms timer heartbeat);
- for 100,000 tensors: filter (until shown) and sort times, and the longest stall of each;
- the process's resident memory each time a file is shown again (its tab closed, reopened).

Targets: cold start <= 1.5 s, open to tree <= 0.3 s, longest stall <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ensure_files(folder: Path) -> tuple[Path, Path]:
    big = folder / "bench_2048mb_800.pt"
    if not big.exists():
        subprocess.run([sys.executable, str(HERE / "bench_info.py"), "--make", str(big)],
                       check=True)
    many = folder / "state_dict_100k.pt"
    if not many.exists():
        code = ("import torch; torch.save({f'model.layers.{i // 10}.sub{i % 10}.weight': "
                f"torch.zeros(4) for i in range(100_000)}}, {str(many)!r})")
        subprocess.run([sys.executable, "-c", code], check=True)
    return big, many


def cold_start(path: Path, platform: str) -> float:
    env = {**os.environ, "QT_QPA_PLATFORM": platform, "CKPT_INSPECTOR_EXIT_WHEN_SHOWN": "1",
           "XDG_CONFIG_HOME": tempfile.mkdtemp()}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "ckpt_inspector", str(path)], env=env,
                          capture_output=True, text=True, timeout=300)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("shown "))
    return float(line.split()[1]) - start


HARNESS = r'''
import json, os, sys, tempfile, time
from PySide6.QtCore import QElapsedTimer, QModelIndex, QSettings, Qt, QTimer
from PySide6.QtWidgets import QApplication
from ckpt_inspector.gui.main_window import MainWindow

app = QApplication([])
settings = QSettings(os.path.join(tempfile.mkdtemp(), "s.ini"), QSettings.Format.IniFormat)
win = MainWindow(settings=settings, probe_devices=False)
win.show()
paths, repeat = sys.argv[1:-1], int(sys.argv[-1])
clock = QElapsedTimer(); clock.start()
last = [clock.elapsed()]; gaps = []
# --stalls MS: whenever the loop is MS late, every thread's stack, dumped from C (a thread
# holding the interpreter's lock in one long C step stops Python-level watchdogs too)
stall_ms = int(os.environ.get("CKPT_BENCH_STALLS") or 0)
if stall_ms:
    import faulthandler
    stall_log = open(os.environ["CKPT_BENCH_STALL_LOG"], "w")
def beat():
    if stall_ms:
        faulthandler.dump_traceback_later(stall_ms / 1000, repeat=True, file=stall_log)
    now = clock.elapsed(); gaps.append(now - last[0]); last[0] = now
heart = QTimer(); heart.setInterval(2); heart.timeout.connect(beat); heart.start()
results = {}
jobs = [(p, i) for p in paths for i in range(repeat)]
state = {}

def start_next():
    if not jobs:
        QTimer.singleShot(0, app.quit); return
    path, i = jobs.pop(0)
    while win.tabs.count():
        win.close_tab(0)
    gaps.clear(); last[0] = clock.elapsed()
    state.update(path=path, t0=time.perf_counter())
    win.open_paths([path])

def shown(path):
    QTimer.singleShot(0, painted)

def painted():
    t1 = time.perf_counter()
    r = results.setdefault(state["path"], {"open": [], "stall": [], "filter": [], "sort": [],
                                          "filter_stall": [], "sort_stall": [], "rss": []})
    r["open"].append(t1 - state["t0"])
    with open("/proc/self/statm") as statm:  # resident pages, with the file shown
        r["rss"].append(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
    QTimer.singleShot(100, lambda: finish(r))

def set_filter(view, text):
    view.filter_edit.blockSignals(True)  # not the field's debounce timer: apply it here
    view.filter_edit.setText(text)
    view.filter_edit.blockSignals(False)
    view.apply_filter()

def finish(r):
    r["stall"].append(max(gaps) if gaps else 0)
    view = state["view"] = win.current_view()
    view.filtered.connect(filtered)
    gaps.clear(); last[0] = clock.elapsed()
    state["t"] = time.perf_counter()
    set_filter(view, "sub3")  # filtered() once it is shown (on a worker for a large tree)

def filtered():
    view, r = state["view"], results[state["path"]]
    view.filtered.disconnect(filtered)
    r["filter"].append(time.perf_counter() - state["t"])
    r["filter_stall"].append(max(gaps) if gaps else 0)
    set_filter(view, "")
    gaps.clear(); last[0] = clock.elapsed()
    t = time.perf_counter()
    view.tree.sortByColumn(0, Qt.SortOrder.DescendingOrder)
    r["sort"].append(time.perf_counter() - t)
    QTimer.singleShot(200, lambda: sorted_(r))

def sorted_(r):  # the longest stall of sorting, the view's layout after it included
    r["sort_stall"].append(max(gaps) if gaps else 0)
    QTimer.singleShot(0, start_next)

win.file_shown.connect(shown)
QTimer.singleShot(500, start_next)
app.exec()
print(json.dumps(results))
'''


STALLS = {"ms": 0}  # --stalls


def in_app(paths: list[Path], platform: str, repeat: int) -> dict:
    env = {**os.environ, "QT_QPA_PLATFORM": platform}
    log = Path(tempfile.mkdtemp()) / "stalls.txt"
    if STALLS["ms"]:
        env.update(CKPT_BENCH_STALLS=str(STALLS["ms"]), CKPT_BENCH_STALL_LOG=str(log))
    proc = subprocess.run([sys.executable, "-c", HARNESS, *map(str, paths), str(repeat)],
                          env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    if STALLS["ms"]:
        print(f"\nevery thread's stack each time the event loop was {STALLS['ms']} ms late "
              f"(innermost first):\n{log.read_text() or '(never)'}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def million(folder: Path, platform: str) -> None:
    if not (folder / "model.safetensors.index.json").exists():
        sys.path.insert(0, str(HERE))
        from bench_shards import make_model

        make_model(folder, 1_000_000, 16)
    r = in_app([folder], platform, 1)[str(folder)]
    print(f"\nQt platform: {platform}; 1,000,000 tensors in 16 shards, opened once\n")
    print(f"  open to tree shown:          {r['open'][0]:.1f} s")
    print(f"  longest event-loop stall:    {r['stall'][0]:.0f} ms (while reading)")
    print(f"  filter 'sub3' to shown:      {r['filter'][0]:.1f} s, longest stall "
          f"{r['filter_stall'][0]:.0f} ms")
    print(f"  sort by key (GUI thread):    {r['sort'][0] * 1000:.0f} ms, longest stall "
          f"{r['sort_stall'][0]:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--platform", default="offscreen")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "ckpt-inspector-bench"))
    ap.add_argument("--million", action="store_true",
                    help="instead: 1,000,000 tensors in 16 safetensors shards and their index "
                         "(made once, about 250 MB), opened once")
    ap.add_argument("--stalls", type=int, default=0, metavar="MS",
                    help="print every thread's stack whenever the event loop is MS late")
    args = ap.parse_args()
    STALLS["ms"] = args.stalls
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    if args.million:
        million(folder / "model_1m", args.platform)
        return
    big, many = ensure_files(folder)

    cold = [cold_start(big, args.platform) for _ in range(args.repeat)]
    res = in_app([big, many], args.platform, args.repeat)
    med = statistics.median
    print(f"\nQt platform: {args.platform}; median of {args.repeat}\n")
    print(f"cold start to tree, {big.name}:   {med(cold):.3f} s   (target <= 1.5 s)")
    for path, label in ((big, "2 GiB / 800 tensors"), (many, "100,000 tensors")):
        r = res[str(path)]
        print(f"{label}:")
        print(f"  open to tree shown:          {med(r['open']):.3f} s   (target <= 0.3 s)")
        print(f"  longest event-loop stall:    {max(r['stall']):.0f} ms   (target <= 50 ms)")
        print(f"  filter 'sub3' to shown:      {med(r['filter']) * 1000:.0f} ms, longest stall "
              f"{max(r['filter_stall']):.0f} ms")
        print(f"  sort by key (GUI thread):    {med(r['sort']) * 1000:.0f} ms, longest stall "
              f"{max(r['sort_stall']):.0f} ms")
        print("  resident memory, each time it is shown again: "
              + ", ".join(f"{b / 2**20:,.0f}" for b in r["rss"]) + " MB")


if __name__ == "__main__":
    main()
