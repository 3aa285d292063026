"""Regenerate ckpt_inspector/core/callables.tsv.gz: what each importable name *is*.

    .venv/bin/python tools/gen_callables.py

The verdict (core/scan.py) must tell a class from a function for names a file
imports, without importing anything the file names. So this tool, run by the
developers, imports the standard library, torch, torchvision and numpy once and
records, for every public or private name of every module it can import (and the
classes nested one level in a class), one kind:

    m  a module                         f  a callable that is not a class
    c  a class                          r  a record class (namedtuple, struct sequence,
                                           enum, exception): building it only stores values
    a  a class whose construction acts on the world (its ``__init__``/``__new__`` lives
       in a module that runs commands, opens files or sockets, downloads or loads code)
    s  a class whose ``__setstate__`` loads, compiles, imports or runs what a state holds
       (``BUILD`` on one runs the file's bytes)
    t  a metaclass: calling it makes a class at load time

plus, where it differs, the canonical ``__module__.__qualname__`` of the object
(``_operator.getitem`` -> ``operator.getitem``), so a denylist entry matches
every alias. tests/core/test_callables.py checks a sample against the installed
libraries.
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import importlib
import io
import os
import pkgutil
import sys
import types
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "ckpt_inspector" / "core" / "callables.tsv.gz"
# torch, torchvision, numpy and the packages installed with them or with this project: a
# name under these roots that the table lacks is no class anyone here knows
ROOTS = ("torch", "torchvision", "numpy", "sympy", "mpmath", "safetensors", "onnx",
         "networkx", "jinja2", "filelock", "fsspec", "PIL", "ml_dtypes", "setuptools", "pip")
# modules never imported here: they open windows or browsers, print, or start services
SKIP = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__",
        "lib2to3", "ensurepip", "venv", "test", "xxsubtype", "_tkinter", "pydoc_data",
        "torch.testing._internal", "torch._inductor.compile_worker", "torch.utils.tensorboard",
        "torch.utils.benchmark", "torch._dynamo.repro", "torch.distributed.elastic.agent",
        "torch.distributed.run", "torch.distributed.launch", "torch.backends._coreml",
        "numpy.distutils", "numpy.f2py", "numpy.testing._private.extbuild",
        "torch.onnx._internal.exporter._testing")
# where a class's constructor lives decides whether building it acts on the world
ACTING_MODULES = (
    "subprocess", "logging", "gzip", "bz2", "lzma", "zipfile", "tarfile", "shelve", "dbm",
    "sqlite3", "_sqlite3", "socket", "_socket", "socketserver", "http", "ftplib", "smtplib",
    "poplib", "imaplib", "nntplib", "telnetlib", "tempfile", "webbrowser", "ctypes", "_ctypes",
    "multiprocessing", "_multiprocessing", "asyncio", "mmap", "io", "_io", "_pyio", "wave",
    "aifc", "sunau", "urllib", "xmlrpc", "pty", "pdb", "bdb", "os", "posix", "nt", "shutil",
    "zipimport", "importlib", "pkgutil", "runpy", "code", "codeop", "fileinput", "mailbox",
    "concurrent", "threading", "_thread", "signal", "select", "selectors", "ssl", "_ssl",
    "numpy._core.memmap", "numpy.core.memmap", "numpy.lib.format", "numpy.lib._datasource",
    "numpy.lib.npyio", "numpy.lib._npyio_impl", "torchvision.datasets", "torchvision.io",
    "torchvision.utils", "torch.utils.tensorboard", "torch.utils.cpp_extension", "torch.hub",
    "torch.package", "torch.distributed", "torch._C._distributed_c10d",
    "torch._C._distributed_rpc", "torch._C._distributed_autograd", "torch.multiprocessing",
    "_frozen_importlib", "_frozen_importlib_external", "torch.library", "torch._library",
    "torch.profiler", "torch.autograd.profiler", "torch._inductor", "torch.export",
    "torch.jit", "torch.serialization", "torch.utils.data.datapipes", "torch.cuda.memory",
    "torch._dynamo", "torch.fx", "torch.compiler", "torch.utils.checkpoint",
)
ACTING_CLASSES = ("torch._C.PyTorchFileWriter", "torch._C.PyTorchFileReader",
                  "torch.PyTorchFileWriter", "torch.PyTorchFileReader",
                  "torch.storage.UntypedStorage", "torch.UntypedStorage")


def _stdlib() -> list[str]:
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith(SKIP))
    out: list[str] = []
    for name in names:
        out.append(name)
        with contextlib.suppress(Exception):
            mod = importlib.import_module(name)
            if hasattr(mod, "__path__"):
                out.extend(m.name for m in pkgutil.walk_packages(mod.__path__, f"{name}.",
                                                                 onerror=lambda _n: None)
                           if not m.name.startswith(SKIP) and ".tests" not in m.name
                           and ".test." not in m.name)
    return out


def _package(root: str) -> list[str]:
    mod = importlib.import_module(root)
    out = [root]
    for info in pkgutil.walk_packages(mod.__path__, f"{root}.", onerror=lambda _n: None):
        if info.name.startswith(SKIP) or ".test" in info.name or "._vendor" in info.name:
            continue
        out.append(info.name)
    return out


def _acting(cls: type) -> bool:
    qual = f"{cls.__module__}.{cls.__qualname__}"
    if qual in ACTING_CLASSES:
        return True
    for attr in ("__init__", "__new__"):
        fn = getattr(cls, attr, None)
        owner = getattr(fn, "__module__", None) or ""
        if not isinstance(fn, (types.FunctionType, types.MethodType)):
            # a C slot wrapper: the class's own module says where its constructor lives
            if fn is getattr(object, attr) or fn is getattr(type, attr, None):
                continue
            owner = next((getattr(k, "__module__", "") for k in cls.__mro__
                          if attr in vars(k) and k is not object), "") or ""
        if owner == "builtins" or not owner:
            continue
        if owner.startswith(tuple(m + "." for m in ACTING_MODULES)) or owner in ACTING_MODULES:
            return True
    return False


# names a __setstate__ uses when it loads, runs or writes what the state holds
RISKY_NAMES = frozenset({
    "loads", "load", "exec", "eval", "compile", "__import__", "import_module", "open",
    "system", "popen", "Popen", "run", "call", "check_call", "check_output", "spawn",
    "execv", "execve", "unlink", "remove", "rmtree", "urlopen", "urlretrieve", "save",
    "write", "write_text", "write_bytes", "from_file", "fromfile", "_import_dotted_name",
    "locate", "_locate", "import_string", "resolve",
})


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _setstate_acts(cls: type) -> bool:
    for klass in cls.__mro__:
        fn = vars(klass).get("__setstate__")
        if fn is None:
            continue
        code = getattr(fn, "__code__", None)
        return code is not None and bool(_code_names(code) & RISKY_NAMES)
    return False


def _record(cls: type) -> bool:
    if issubclass(cls, tuple) and (hasattr(cls, "_fields") or hasattr(cls, "n_fields")):
        return True
    return issubclass(cls, (enum.Enum, BaseException))


def _kind(obj: object) -> str | None:
    if isinstance(obj, types.ModuleType):
        return "m"
    if isinstance(obj, type):
        try:
            if issubclass(obj, type):
                return "t"
            if _setstate_acts(obj):
                return "s"
            if _acting(obj):
                return "a"
            return "r" if _record(obj) else "c"
        except Exception:
            return "c"
    if callable(obj):
        return "f"
    return None


def _canonical(obj: object) -> str | None:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    module = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qual, str) and "<" not in qual:
        return f"{module}.{qual}"
    return None


def main() -> None:
    warnings.simplefilter("ignore")
    modules = _stdlib()
    for root in ROOTS:
        with contextlib.suppress(ImportError):
            modules.extend(_package(root))
    table: dict[str, tuple[str, str | None]] = {}
    sink = io.StringIO()
    for name in modules:
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                mod = importlib.import_module(name)
        except BaseException:  # optional dependencies, platform modules, SystemExit
            continue
        table.setdefault(name, ("m", None))
        try:
            items = list(vars(mod).items())
        except TypeError:
            continue
        for attr, obj in items:
            kind = _kind(obj)
            if kind is None or not isinstance(attr, str):
                continue
            full = f"{name}.{attr}"
            canon = _canonical(obj)
            table[full] = (kind, canon if canon and canon != full else None)
            if isinstance(obj, type) and kind != "m":
                with contextlib.suppress(Exception):
                    for inner_name, inner in vars(obj).items():
                        if isinstance(inner, type):
                            inner_kind = _kind(inner) or "c"
                            c = _canonical(inner)
                            key = f"{full}.{inner_name}"
                            table[key] = (inner_kind, c if c and c != key else None)
    import numpy
    import torch
    import torchvision

    lines = [f"# generated by tools/gen_callables.py: python {sys.version.split()[0]}, "
             f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
             f"numpy {numpy.__version__}",
             "# roots: " + " ".join(ROOTS)]
    for full in sorted(table):
        kind, canon = table[full]
        lines.append(f"{full}\t{kind}" + (f"\t{canon}" if canon else ""))
    data = ("\n".join(lines) + "\n").encode()
    OUT.write_bytes(gzip.compress(data, 9, mtime=0))
    counts: dict[str, int] = {}
    for kind, _ in table.values():
        counts[kind] = counts.get(kind, 0) + 1
    print(f"wrote {len(table):,} names ({counts}) to {OUT} "
          f"({os.path.getsize(OUT):,} bytes compressed)")


if __name__ == "__main__":
    main()
