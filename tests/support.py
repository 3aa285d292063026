"""Helpers shared by the tests (conftest.py files hold only fixtures)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this runs a shell command (one that creates the marker file)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def run_cli(*args: str, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "ckpt_inspector", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})}, cwd=ROOT)


def open_and_wait(qtbot, window, path):
    """Open ``path`` in the main window and wait until its tree is shown."""
    with qtbot.waitSignal(window.file_shown, timeout=60_000):
        [view] = window.open_paths([str(path)])
    return view


class TinyNet:  # built lazily so importing conftest does not import torch
    @staticmethod
    def make(torch):
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10))


def drive(gen):
    """Run a core generator to its end; its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def tensor_infos(path):
    """``{key: TensorInfo}`` of a file, as the reader sees it."""
    from ckpt_inspector.core import open_checkpoint
    from ckpt_inspector.core.tree import key_of

    return {key_of(p): n.tensor for p, n in open_checkpoint(path).tensors()}


def find_row(view, key):
    """The tree row (a proxy index) of the node with this full key."""
    from PySide6.QtCore import QModelIndex

    from ckpt_inspector.gui.tree_model import NodeRole

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
