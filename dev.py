#!/usr/bin/env python3
"""Set up a local virtual environment and run the app or the test suite.

    python3 dev.py app [FILES...]   set up .venv (first run: a few minutes), then start the app
    python3 dev.py test [ARGS...]   set up .venv, then run the whole test suite (pytest ARGS)
    python3 dev.py bundle [ARGS...] set up .venv with PyInstaller, then build the one-folder
                                    bundle dist/ckpt-inspector (tools/build_bundle.py ARGS:
                                    --cpu-only, --windowed, --test...; --viewer: the light
                                    bundle without torch, dist/ckpt-inspector-viewer)

Only the Python standard library is used here, so this works on a fresh machine
with nothing but Python 3.10+. Dependencies are reinstalled only when
pyproject.toml changes. SIGTERM and SIGHUP sent to this script are passed on to the
app, the tests or the build it runs.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".ckpt-inspector-installed"
BUNDLE_STAMP = VENV / ".ckpt-inspector-bundle-installed"


def _venv_python() -> Path:
    if os.name == "nt":
        return VENV / "Scripts" / "python.exe"
    return VENV / "bin" / "python"


def _wanted_stamp() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"{digest} {sys.version_info[:2]}"


def setup() -> Path:
    if sys.version_info < (3, 10):  # noqa: UP036 - this script may run on any Python 3
        sys.exit("ckpt-inspector needs Python 3.10 or newer")
    py = _venv_python()
    if not py.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    if not STAMP.exists() or STAMP.read_text() != _wanted_stamp():
        print("installing ckpt-inspector and its dependencies (first time: a few minutes)",
              flush=True)
        pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        # everything: the torch extra too (a light install is `pip install .`)
        subprocess.run([*pip, "-e", f"{ROOT}[torch,test]"], check=True)
        STAMP.write_text(_wanted_stamp())
    return py


def setup_bundle() -> Path:
    """setup(), plus the `bundle` extra (PyInstaller) in the same environment."""
    py = setup()
    if not BUNDLE_STAMP.exists() or BUNDLE_STAMP.read_text() != _wanted_stamp():
        print("installing PyInstaller into .venv", flush=True)
        subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q",
                        "-e", f"{ROOT}[torch,test,bundle]"], check=True)
        BUNDLE_STAMP.write_text(_wanted_stamp())
    return py


def run_child(cmd: list[str], **kwargs) -> int:
    """Run ``cmd`` to its end. SIGTERM and SIGHUP sent to this script (a process manager, a
    closed terminal, ``kill``) are passed on to it, so that it ends too instead of being
    left running; Ctrl-C reaches it from the terminal by itself, so this script only waits
    for it. Its exit status, or 128 + the signal that ended it, as shells report it."""
    proc = subprocess.Popen(cmd, **kwargs)
    previous = {}

    def forward(signum, _frame):
        if proc.poll() is None:
            proc.send_signal(signum)

    passed_on = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    try:
        for sig in passed_on:
            previous[sig] = signal.signal(sig, forward)
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:  # this script is ending for another reason
            proc.terminate()
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("app", "test", "bundle"):
        print(__doc__.strip())
        return 2
    command, rest = argv[0], argv[1:]
    if command == "bundle":
        py = setup_bundle()
        return run_child([str(py), str(ROOT / "tools" / "build_bundle.py"), *rest], cwd=ROOT)
    py = setup()
    if command == "app":
        return run_child([str(py), "-m", "ckpt_inspector", *rest])
    return run_child([str(py), "-m", "pytest", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
