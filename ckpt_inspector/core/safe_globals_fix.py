"""The code that makes ``torch.load(path)`` (``weights_only=True``) accept a file: its imports,
then ``torch.serialization.add_safe_globals([...])``, to run before that ``torch.load``.

Each name is written the way torch matches it: torch keys an allowed object by its
``__module__`` and ``__qualname__``, so an object is named through the module the file
names. Where the installed library keeps it elsewhere (numpy 2 moved ``numpy.core`` to
``numpy._core``; a numpy 1 file names ``numpy.core.multiarray._reconstruct``), the object is
given with the file's spelling, ``(obj, "numpy.core.multiarray._reconstruct")``. Names are
text from the file: one that is not a dotted Python identifier gets no code at all.
"""

from __future__ import annotations

import keyword

from ckpt_inspector.core import installed

NUMPY_CORES = ("numpy.core", "numpy._core")


def numpy_core() -> str | None:
    """Where the installed numpy keeps its core: ``numpy._core`` from numpy 2 on,
    ``numpy.core`` before; None without numpy. From the package's metadata (no import)."""
    found = installed.version("numpy")
    if found is None:
        return None
    major = found.split(".")[0]
    return "numpy._core" if major.isdigit() and int(major) >= 2 else "numpy.core"


def is_dotted_identifier(text: str) -> bool:
    return bool(text) and all(p.isidentifier() and not keyword.iskeyword(p)
                              for p in text.split("."))


def _where(module: str) -> str:
    """The module to import for an object the file names in ``module``."""
    core = numpy_core()
    for old in NUMPY_CORES:
        if core and (module == old or module.startswith(old + ".")):
            return core + module[len(old):]
    return module


def fix_code(names: list[tuple[str, str]], imports: dict[str, list[str]] | None = None
             ) -> str | None:
    """Python code allowing ``names`` (``(module, name)`` as torch reads them) for torch's
    weights-only loader, and importing the modules in ``imports`` (module -> the names its
    import allows); None when a name is not a Python identifier (no code is made of it)."""
    imports = imports or {}
    modules: set[str] = set()
    entries: list[str] = []
    notes: list[str] = []
    for module, name in names:
        if not (is_dotted_identifier(module) and is_dotted_identifier(name)):
            return None
        full = f"{module}.{name}"
        if module == "builtins":
            entries.append(name)
            continue
        where = _where(module)
        modules.add(where)
        expr = f"{where}.{name}"
        entries.append(expr if where == module else f"({expr}, {full!r})")
        if module == "__main__":
            notes.append(f"# {full}: the class of the script that saved the file; run this "
                         "in a script that defines or imports it")
    if not all(is_dotted_identifier(m) for m in imports):
        return None
    lines = ["import torch"]
    lines += [f"import {m}" for m in sorted(modules) if m != "torch"]
    for module, allowed in sorted(imports.items()):
        lines.append(f"import {module}  # allows {_names(allowed)}")
    lines += notes
    if entries:
        lines.append("")
        lines.append("torch.serialization.add_safe_globals([")
        lines += [f"    {e}," for e in entries]
        lines.append("])")
    return "\n".join(lines) + "\n"


def _names(names: list[str]) -> str:
    short = [n.rpartition(".")[2] for n in names]
    return ", ".join(short[:4]) + (f" and {len(short) - 4} more" if len(short) > 4 else "")
