"""Architecture contracts: the core never imports Qt (or torch at import time), gui or cli;
the gui never imports torch; the package's import graph has no cycle."""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

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


# -- the import graph -----------------------------------------------------------------------
PACKAGE = ROOT / "ckpt_inspector"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, modules: dict[str, Path], top_level: bool) -> set[str]:
    """The package's modules that ``name`` imports (at module level only, if ``top_level``;
    never those under ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                 ast.Lambda))
            if isinstance(child, ast.Import) and not (top_level and inner):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and not (top_level and inner):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - child.level + 1]
                                    + ([base] if base else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.add(full if full in modules else base)
            visit(child, inner)

    visit(tree, False)
    return {m for m in found if m in modules and m != name}


def _graph(top_level: bool = True) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules, top_level) for name, path in modules.items()}


def test_no_import_cycles():
    """Not even through an import inside a function."""
    graph = _graph(top_level=False)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, cycles


def test_layers():
    """core imports neither gui nor cli (anywhere, not even inside a function); gui never
    imports torch; cli's modules import no Qt at module level (the window starts only on
    request)."""
    bad = []
    for name, path in _modules().items():
        imported = _imports(path, name, {**_modules(), "torch": path, "PySide6": path},
                            top_level=False)
        text = path.read_text()
        if name.startswith("ckpt_inspector.core"):
            bad += [f"{name} -> {m}" for m in imported
                    if m.startswith(("ckpt_inspector.gui", "ckpt_inspector.cli"))]
        if name.startswith("ckpt_inspector.gui") and \
                any(line.lstrip().startswith(("import torch", "from torch"))
                    for line in text.splitlines()):
            bad.append(f"{name} imports torch")
    assert not bad, bad


def test_gui_never_imports_torch_at_run_time():
    modules = [m for m in _modules() if m.startswith("ckpt_inspector.gui")]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120,
                   env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
