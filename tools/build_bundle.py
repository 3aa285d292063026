"""Build the one-folder bundle from build.spec; print the build time and the bundle's size.

    python3 dev.py bundle [OPTIONS]                  installs PyInstaller into .venv, then this
    .venv/bin/python tools/build_bundle.py [OPTIONS]

OPTIONS
    --console, --windowed, --cpu-only, --no-strip   passed to build.spec (see its header)
    --viewer     the light bundle without torch, in dist/ckpt-inspector-viewer
    --clean      start from an empty PyInstaller work folder (build/build)
    --test       then run tests/test_bundle.py against the new bundle
    --quiet      keep PyInstaller's log in build/pyinstaller.log instead of the terminal

The bundle is dist/ckpt-inspector (the executable: dist/ckpt-inspector/ckpt-inspector), or
dist/ckpt-inspector-viewer with --viewer.
PyInstaller's work files and its cache stay under build/.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "ckpt-inspector"
BUNDLE = ROOT / "dist" / NAME
VIEWER = ROOT / "dist" / f"{NAME}-viewer"
SPEC_OPTIONS = ("--console", "--windowed", "--cpu-only", "--no-strip", "--viewer")


def disk_usage(path: Path) -> int:
    """Bytes on disk under ``path``, as ``du`` counts them (blocks, symlinks not followed)."""
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_blocks * 512
    return path.lstat().st_blocks * 512 + sum(disk_usage(p) for p in path.iterdir())


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB") else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def biggest_parts(bundle: Path, count: int = 12) -> list[tuple[int, str]]:
    """The largest folders and files of the bundle, with the big ones (nvidia, torch/lib)
    broken down a level further."""
    internal = bundle / "_internal"
    split = {internal / "nvidia", internal / "torch", internal / "torch" / "lib"}
    parts: list[tuple[int, str]] = []

    def walk(folder: Path) -> None:
        for p in folder.iterdir():
            if p in split and p.is_dir() and not p.is_symlink():
                walk(p)
            else:
                parts.append((disk_usage(p), str(p.relative_to(bundle))))

    walk(internal if internal.is_dir() else bundle)
    return sorted(parts, reverse=True)[:count]


def check(exe: Path, viewer: bool = False) -> None:
    """A quick look that the executable starts and that torch imports inside it (the light
    bundle: that it starts)."""
    for args in (["--version"], *([] if viewer else [["devices", "--json"]])):
        start = time.perf_counter()
        proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)
        took = time.perf_counter() - start
        out = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
        print(f"  {exe.name} {' '.join(args)}: exit {proc.returncode} in {took:.1f} s: "
              f"{out[-1] if out else ''}")
        if proc.returncode != 0:
            sys.exit(f"build_bundle: the bundle does not work:\n{proc.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for option in SPEC_OPTIONS:
        parser.add_argument(option, action="store_true", help="passed to build.spec")
    parser.add_argument("--clean", action="store_true", help="empty PyInstaller's work folder")
    parser.add_argument("--test", action="store_true", help="run tests/test_bundle.py after")
    parser.add_argument("--quiet", action="store_true", help="PyInstaller's log to a file")
    args = parser.parse_args(argv)

    try:
        import PyInstaller
    except ImportError:
        print("build_bundle: PyInstaller is not installed here; `python3 dev.py bundle` "
              "installs it into .venv (pip install -e '.[bundle]')", file=sys.stderr)
        return 2
    spec_options = [o for o in SPEC_OPTIONS if getattr(args, o[2:].replace("-", "_"))]
    command = [sys.executable, "-m", "PyInstaller", "--noconfirm",
               "--distpath", str(ROOT / "dist"), "--workpath", str(ROOT / "build"),
               *(["--clean"] if args.clean else []), str(ROOT / "build.spec")]
    if spec_options:
        command += ["--", *spec_options]
    # PyInstaller's cache (stripped copies of libraries, several GB if ever used) goes under
    # build/, not into ~/.cache
    env = {**os.environ, "PYINSTALLER_CONFIG_DIR": str(ROOT / "build" / "pyinstaller-config")}
    bundle = VIEWER if args.viewer else BUNDLE
    print(f"building {bundle.relative_to(ROOT)} with PyInstaller {PyInstaller.__version__}"
          f"{' ' + ' '.join(spec_options) if spec_options else ''}", flush=True)
    log = ROOT / "build" / "pyinstaller.log"
    start = time.perf_counter()
    if args.quiet:
        log.parent.mkdir(exist_ok=True)
        with open(log, "w") as out:
            code = subprocess.call(command, cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    else:
        code = subprocess.call(command, cwd=ROOT, env=env)
    took = time.perf_counter() - start
    if code != 0:
        print(f"build_bundle: PyInstaller failed (exit {code})"
              f"{f'; its log: {log}' if args.quiet else ''}", file=sys.stderr)
        return code

    exe = bundle / (NAME + (".exe" if os.name == "nt" else ""))
    files = sum(len(names) for _, _, names in os.walk(bundle))
    print(f"\nbuilt {exe.relative_to(ROOT)} in {took / 60:.1f} min ({took:.0f} s)")
    print(f"bundle size: {human(disk_usage(bundle))} on disk, {files:,} files")
    print("biggest parts:")
    for size, part in biggest_parts(bundle):
        print(f"  {human(size):>10}  {part}")
    check(exe, args.viewer)
    if args.test:
        env = {**os.environ, "CKPT_INSPECTOR_BUNDLE_TEST": "existing"}
        tests = "tests/test_bundle_viewer.py" if args.viewer else "tests/test_bundle.py"
        return subprocess.call([sys.executable, "-m", "pytest", tests, "-v"], cwd=ROOT, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
