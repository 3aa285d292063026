"""ckpt-inspector against picklescan, modelscan and fickling on the same corpus.

    .venv/bin/python benchmarks/bench_scanners.py [--venv DIR] [--matrix]

The corpus is tests/corpus.py: malicious samples (each payload would create a
marker file) and benign checkpoints. The other scanners are installed from PyPI
into their own virtual environment (``--venv``, made on first use); a tool that
does not install is reported as such. Each tool's answer per file is read from
its exit code:

- ckpt-inspector ``scan``: dangerous (exit 1 with that verdict) or refused with a
  reason (exit 3) is "flagged"; needs-trust on a benign file is not an alarm
  (loading it would run code, which is true), dangerous is.
- picklescan, modelscan, fickling ``--check-safety``: 1 is "flagged", 0 "clean",
  anything else (a parse failure, "no supported files") "error".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

TOOLS = ("ckpt-inspector", "picklescan", "modelscan", "fickling")
PACKAGES = ["picklescan", "modelscan", "fickling", "typing_extensions"]


def ensure_venv(folder: Path) -> dict[str, str | None]:
    """Executables of the other scanners (None for one that would not install)."""
    py = folder / "bin" / "python"
    if not py.exists():
        venv.EnvBuilder(with_pip=True).create(folder)
    found: dict[str, str | None] = {}
    for pkg in ("picklescan", "modelscan", "fickling"):
        exe = folder / "bin" / pkg
        if not exe.exists():
            subprocess.run([str(py), "-m", "pip", "install", "-q", pkg, "typing_extensions"],
                           capture_output=True, timeout=600)
        found[pkg] = str(exe) if exe.exists() else None
    return found


def run(cmd: list[str], cwd: Path | None = None) -> tuple[int, str]:
    try:  # in the file's folder: fickling writes safety_results.json where it runs
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)
    except subprocess.TimeoutExpired:
        return -1, "timeout"
    return proc.returncode, proc.stdout + proc.stderr


def judge(tool: str, exe: str, path: Path) -> str:
    if tool == "ckpt-inspector":
        code, out = run([sys.executable, "-m", "ckpt_inspector", "scan", str(path), "--json"])
        if code == 3 and not out.lstrip().startswith("{"):
            return "flagged"  # refused with a reason
        try:
            verdict = json.loads(out[: out.rindex("}") + 1])["verdict"]
        except (ValueError, KeyError):
            return "error"
        return {"dangerous": "flagged", "needs-trust": "trust", "safe": "clean"}[verdict]
    args = {"picklescan": ["-p", str(path)], "modelscan": ["-p", str(path)],
            "fickling": ["--check-safety", str(path)]}[tool]
    code, out = run([exe, *args], cwd=path.parent)
    if "Traceback (most recent call last)" in out:
        return "error"  # the tool crashed (Python exits 1 then, which is not a verdict)
    return {0: "clean", 1: "flagged"}.get(code, "error")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--venv", default=os.path.join(tempfile.gettempdir(),
                                                   "ckpt-inspector-scanners"))
    ap.add_argument("--matrix", action="store_true", help="also print every file's result")
    args = ap.parse_args()

    import corpus

    work = Path(tempfile.mkdtemp(prefix="scanner-corpus-"))
    marker = work / "MARKER"
    samples = corpus.build(work / "files", marker)
    exes = {"ckpt-inspector": sys.executable, **ensure_venv(Path(args.venv))}
    results: dict[str, dict[str, str]] = {t: {} for t in TOOLS}
    for tool in TOOLS:
        if exes.get(tool) is None:
            continue
        for s in samples:
            results[tool][s.name] = judge(tool, exes[tool], s.path)
    assert not marker.exists(), "a scanner ran a payload"

    bad = [s for s in samples if s.malicious]
    good = [s for s in samples if not s.malicious]
    print(f"\ncorpus: {len(bad)} malicious files, {len(good)} benign files "
          f"(tests/corpus.py); no marker file appeared\n")
    print("| tool | malicious flagged | malicious reported clean | malicious not scanned "
          "(error) | benign wrongly flagged | benign not scanned (error) |")
    print("|---|---|---|---|---|---|")
    for tool in TOOLS:
        if exes.get(tool) is None:
            print(f"| {tool} | did not install | | | | |")
            continue
        r = results[tool]
        caught = sum(r[s.name] == "flagged" for s in bad)
        missed = sum(r[s.name] in ("clean", "trust") for s in bad)
        err_bad = sum(r[s.name] == "error" for s in bad)
        alarms = sum(r[s.name] == "flagged" for s in good)
        err_good = sum(r[s.name] == "error" for s in good)
        print(f"| {tool} | {caught}/{len(bad)} | {missed} | {err_bad} | {alarms}/{len(good)} | "
              f"{err_good} |")
    if args.matrix:
        print("\n| file | " + " | ".join(TOOLS) + " |")
        print("|---|" + "---|" * len(TOOLS))
        for s in samples:
            print(f"| {s.name} | " + " | ".join(results[t].get(s.name, "-") for t in TOOLS)
                  + " |")


if __name__ == "__main__":
    main()
