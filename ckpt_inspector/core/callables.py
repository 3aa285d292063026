"""What a name a pickle imports *is* (a class, a function, a module), known without importing it.

The table (``callables.tsv.gz``, written by ``tools/gen_callables.py`` from the
standard library, torch, torchvision and numpy installed with this project) holds
one kind per name:

``m`` module, ``c`` class, ``r`` record class (namedtuple, enum, exception: building
one only stores values), ``a`` a class whose construction acts on the world (runs
commands, opens files or sockets, downloads, loads code), ``s`` a class whose
``__setstate__`` loads or runs what the state holds, ``t`` a metaclass, ``f`` a callable
that is not a class. A name under those packages that the table does not hold (a dotted
walk such as ``Path.write_text``, a method) is judged by :func:`kind_of`.
"""

from __future__ import annotations

import gzip
import sys
from functools import lru_cache
from importlib import resources

MODULE, CLASS, RECORD, ACTING, FUNCTION, UNKNOWN = "m", "c", "r", "a", "f", "?"
SETSTATE, METACLASS = "s", "t"
CLASS_KINDS = frozenset({CLASS, RECORD, ACTING, SETSTATE, METACLASS})


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, str], dict[str, str], frozenset[str]]:
    kinds: dict[str, str] = {}
    canon: dict[str, str] = {}
    roots = {"builtins", "__builtin__", *sys.stdlib_module_names}
    raw = resources.files("ckpt_inspector.core").joinpath("callables.tsv.gz").read_bytes()
    for line in gzip.decompress(raw).decode().splitlines():
        if not line or line[0] == "#":
            if line.startswith("# roots:"):
                roots.update(line[len("# roots:"):].split())
            continue
        parts = line.split("\t")
        kinds[parts[0]] = parts[1]
        if len(parts) > 2:
            canon[parts[0]] = parts[2]
    return kinds, canon, frozenset(roots)


def canonical(full_name: str) -> str:
    """The object's own ``module.qualname`` (``torch.save`` -> ``torch.serialization.save``)."""
    return _table()[1].get(full_name, full_name)


def resolve(module: str, name: str) -> tuple[str, str]:
    """(kind, canonical name) of ``module.name``; the kind is one of the constants above.

    A dotted ``name`` walks attributes: through a module it is what it reaches there
    (``argparse`` + ``_os.system`` is ``os.system``, a function); through a class it is
    a nested class only if the table says so, else a method or attribute (a function).
    Names in packages the table does not cover are ``?`` (unknown), as are names these
    packages do not have.
    """
    kinds = _table()[0]
    full = f"{module}.{name}"
    kind = kinds.get(full)
    if kind is not None:
        return kind, canonical(full)
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):  # the longest known prefix, then the rest
        head = f"{module}.{'.'.join(parts[:i])}"
        head_kind = kinds.get(head)
        if head_kind is None:
            continue
        rest = ".".join(parts[i:])
        if head_kind == MODULE:  # a shorter name each time: the walk ends
            return resolve(canonical(head), rest)
        return FUNCTION, f"{canonical(head)}.{rest}"  # a method or attribute
    return UNKNOWN, full


def is_known_package(module: str) -> bool:
    """Whether the table covers ``module``'s package (the standard library, torch,
    torchvision, numpy and what is installed with them): a name there that the table lacks
    is no class the installed libraries have."""
    return module.split(".")[0] in _table()[2]
