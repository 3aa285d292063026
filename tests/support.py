"""Helpers shared by the tests (conftest.py files hold only fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def payload(marker, protocol: int = 2) -> bytes:
    """A bare pickle that runs ``touch marker`` when loaded."""
    import pickle

    return pickle.dumps(Reduce(os.system, f"touch {marker}"), protocol=protocol)


def build_sample(torch, builder, marker) -> bytes:
    """A hostile sample's bytes (its builder may warn while it makes them)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return builder(torch, marker)


def scan_file(path):
    """``(checkpoint, scan report, error)`` as ``scan`` sees a file: what was read before
    a failure is judged too."""
    from ckpt_inspector.core import CheckpointError, open_checkpoint
    from ckpt_inspector.core.scan import scan

    try:
        ckpt, error = open_checkpoint(path), None
    except CheckpointError as err:
        ckpt, error = err.partial, str(err)
    assert ckpt is not None, error
    return ckpt, scan(ckpt, error), error


class Payload:
    """Unpickling this runs a shell command (one that creates the marker file)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


_PEAK = ("import runpy, sys\nsys.argv = ['ckpt-inspector', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('ckpt_inspector', run_name='__main__')\nfinally:\n"
         "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
         "    print('peak-kib', hwm[0].split()[1] if hwm else 0, file=sys.stderr)\n")


def run_limited(*args: str, memory_gb: int = 2, timeout: int = 120):
    """The CLI under an address-space limit (a memory bomb fails the test, not the machine);
    ``proc.peak_kib`` is its peak RSS. That is VmHWM, not ``ru_maxrss``: the latter
    survives exec, so it starts at the forking pytest process's own peak."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_gb << 30, memory_gb << 30))
    proc = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    proc.peak_kib = int(lines[-1].split()[-1]) if lines and lines[-1].startswith(
        "peak-kib") else 0
    if lines and lines[-1].startswith("peak-kib"):
        proc.stderr = "\n".join(lines[:-1]) + ("\n" if len(lines) > 1 else "")
    return proc


def user_env(home: Path) -> dict[str, str]:
    """A user's environment for a bundle: their own config and cache folders under ``home``,
    no display (offscreen Qt), nothing of .venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CKPT_INSPECTOR_", "QT_"))}
    return {**env, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"), "QT_QPA_PLATFORM": "offscreen"}


def run_exe(exe: Path, *args: str, env: dict[str, str], timeout: float = 300):
    """A bundle's executable run as a user runs it, from their home folder."""
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=env["HOME"])


def torch_blocker(folder: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes torch, torchvision and onnxscript fail to
    import as they do where they are not installed (a light install)."""
    for name in ("torch", "torchvision", "onnxscript"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    return folder


def run_cli(*args: str, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "ckpt_inspector", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})}, cwd=ROOT)


def open_and_wait(qtbot, window, path):
    """Open ``path`` in the main window and wait until its tree is shown."""
    with qtbot.waitSignal(window.file_shown, timeout=60_000):
        [view] = window.open_paths([str(path)])
    # the tree is shown from the read's result; its task ends on the worker's next signal
    qtbot.waitUntil(lambda: not any(t.label.startswith("Reading ") for t in window.runner.tasks),
                    timeout=10_000)
    return view


class TinyNet:  # built lazily so importing conftest does not import torch
    @staticmethod
    def make(torch):
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))


def drive(gen):
    """Run a core job to its end; its return value."""
    from ckpt_inspector.core.progress import run

    return run(gen)


def tensor_infos(path):
    """``{key: TensorInfo}`` of a file, as the reader sees it."""
    from ckpt_inspector.core import open_checkpoint
    from ckpt_inspector.core.tree import key_of

    return {key_of(p): n.tensor for p, n in open_checkpoint(path).tensors()}


def find_row(view, key):
    """The tree row (a proxy index) of the node with this full key."""
    from PySide6.QtCore import QModelIndex

    from ckpt_inspector.gui.tree.model import NodeRole

    proxy = view.proxy
    stack = [QModelIndex()]
    while stack:
        parent = stack.pop()
        for row in range(proxy.rowCount(parent)):
            index = proxy.index(row, 0, parent)
            if index.data(NodeRole).key == key:
                return index
            stack.append(index)
    raise KeyError(key)


def numpy_arrays() -> dict:
    """Arrays of each layout and kind numpy writes: C and Fortran order, big-endian, bool,
    complex, a 0-d scalar and an empty array (for the readers of .npy and joblib files)."""
    import numpy as np

    return {
        "c_order": np.arange(12, dtype=np.float32).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4)),
        "big_endian": np.arange(5, dtype=">f8") / 3,
        "flags": np.array([True, False, True]),
        "complex": np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
        "scalar": np.array(7, dtype=np.uint32),
        "empty": np.zeros((0, 3), dtype=np.float16),
    }
