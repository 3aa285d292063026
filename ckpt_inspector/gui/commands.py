"""ckpt-inspector's own commands, run as child processes.

Anything that imports torch (the demo, loading with torch, exports, device
discovery) runs in a child: importing torch holds the GIL for about a second and
would freeze the window.
"""

from __future__ import annotations

import subprocess
import sys


def cli_command(*args: str) -> list[str]:
    """``ckpt-inspector ARGS`` as a command line (from a bundle, the executable itself)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *args]
    return [sys.executable, "-m", "ckpt_inspector", *args]


def run_cli(*args: str, timeout: float = 600) -> str:
    """Run a command to the end (on a worker thread) and return its stdout; raise with its
    last line of stderr when it fails."""
    proc = subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(lines[-1].removeprefix("ckpt-inspector: ") if lines
                           else f"{args[0]} failed with exit code {proc.returncode}")
    return proc.stdout
