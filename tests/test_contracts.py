"""Architecture contracts: the core never imports Qt (or torch at import time)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import ckpt_inspector.core

from support import ROOT


def test_core_imports_neither_qt_nor_torch():
    modules = [m.name for m in pkgutil.walk_packages(ckpt_inspector.core.__path__,
                                                     "ckpt_inspector.core.")]
    assert len(modules) > 10
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = [m for m in ('PySide6', 'pyqtgraph', 'superqt', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_dtype_table_matches_torch(torch):
    from ckpt_inspector.core import dtypes

    for name, d in dtypes.DTYPES.items():
        t = getattr(torch, name)
        assert t.itemsize == d.itemsize, name
    for cls, name in dtypes.STORAGE_CLASSES.items():
        if cls != "UntypedStorage":
            assert getattr(torch, cls).dtype == getattr(torch, name), cls
    import safetensors.torch as st

    for code, name in dtypes.SAFETENSORS_CODES.items():
        if code in st._TYPES:
            assert st._TYPES[code] == getattr(torch, name), code


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
