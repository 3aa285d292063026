"""TorchScript archives (``torch.jit.save``): a torch zip archive plus the model's code.

``torch.jit.save`` writes what ``torch.save`` does (``<root>/data.pkl`` and its
storages, read by :mod:`torch_zip`) and adds ``<root>/code/`` (the model's
TorchScript, listed here, never run) and ``<root>/constants.pkl``. What is the
archive's own lives here: telling a scripted archive from a plain one, reading
from its code which attributes are parameters and buffers, and the note that
``torch.jit.load`` compiles and runs that code.

The registry reads it with :func:`torch_zip.read`, which names the format from
what the archive holds (a file reaches it through ``torch.load`` as well).
"""

from __future__ import annotations

import re
from typing import Any

from ckpt_inspector.core.findings import DANGEROUS, Finding
from ckpt_inspector.core.formats import _zip, _zip_members
from ckpt_inspector.core.io.source import Source
from ckpt_inspector.core.pickle.values import Call, GlobalRef
from ckpt_inspector.core.tree import Checkpoint

NAME = "torchscript"
# TorchScript code read to tell parameters from buffers
MAX_CODE_FILE = 16 << 20
MAX_CODE_TOTAL = 128 << 20


def sniff(src: Source) -> bool:
    """Whether a torch zip archive (the registry checks that first) has TorchScript's
    records, from the directory cached on ``src``."""
    try:
        directory = _zip.directory_of(src)
    except _zip.ZipError:
        return False
    return is_script(directory, directory.prefix, [e.filename for e in directory.entries])


def is_script(directory: _zip.Directory, prefix: str, names: Any) -> bool:
    """TorchScript's records: ``constants.pkl`` (as torch lists or finds it) or code
    under ``<prefix>code/``."""
    listed = directory.all_records()
    return (listed is not None and "constants.pkl" in listed) or any(
        n.startswith(f"{prefix}code/") for n in names) or (
        directory.record("constants.pkl") is not None)


def code_files(names: Any, prefix: str) -> list[str]:
    """The archive's code files, relative to its root."""
    return sorted(n[len(prefix):] for n in names
                  if n.startswith(f"{prefix}code/") and n.endswith(".py"))


def note_code(ckpt: Checkpoint, code: list[str], label: str) -> None:
    """``torch.jit.load`` compiles and runs the archive's code: the file needs trust."""
    runs = (f"TorchScript archive{' ' + label.rstrip('/') if label else ''}: "
            f"torch.jit.load compiles and runs the {len(code)} code files it contains")
    ckpt.runs_code = f"{ckpt.runs_code}; {runs}" if ckpt.runs_code else runs


_CLASS_RE = re.compile(r"^class (\w+)\(", re.M)
# one line each, as TorchScript writes them: [ \t] and [^\]\n] keep the search linear
# (``^\s+`` crossed blank lines and made 120,000 of them take 36 s)
_LIST_RE = re.compile(r"^[ \t]+__(parameters|buffers)__ = \[([^\]\n]*)\]", re.M)
_QUOTED_RE = re.compile(r'"([^"\n]+)"')
# builtins of TorchScript that reach the file system when the code runs: from_file
# (``torch.from_file(path, shared=True, size)`` creates and maps the file; also reached
# as ``ops.aten.from_file``)
_FILE_OPS_RE = re.compile(r"\bfrom_file\s*\(")  # (a call may break its line before the "(")


class ScriptRoles:
    """Which attributes of each scripted class are parameters and buffers.

    TorchScript writes ``__parameters__ = ["weight", ]`` and ``__buffers__``
    into each class of ``code/``; ``state_dict()`` holds exactly those.
    """

    def __init__(self, archive: Any):
        self.classes: dict[str, dict[str, str]] = {}
        code = f"{archive.prefix}code/"
        left = MAX_CODE_TOTAL
        for info in archive.infos:
            name = info.filename
            if not (name.startswith(code) and name.endswith(".py")):
                continue
            if info.file_size > min(MAX_CODE_FILE, left):
                archive.ckpt.warnings.append(
                    f"{name}: {info.file_size:,} bytes of code, not read for parameter roles")
                continue
            module = name[len(code):-3].replace("/", ".")
            try:
                text = _zip_members.read_member(archive.raw, info, MAX_CODE_FILE)[0].decode(
                    "utf-8", "replace")
            except _zip_members.MemberError:
                continue
            left -= info.file_size
            _file_access(archive, name, text)
            starts = [(m.start(), m.group(1)) for m in _CLASS_RE.finditer(text)]
            for i, (start, cls) in enumerate(starts):
                end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
                roles: dict[str, str] = {}
                for m in _LIST_RE.finditer(text, start, end):
                    role = "parameter" if m.group(1) == "parameters" else "buffer"
                    for attr in _QUOTED_RE.findall(m.group(2)):
                        roles[attr] = role
                self.classes[f"{module}.{cls}"] = roles

    def __call__(self, call: Call) -> dict[str, str] | None:
        cls = call.func
        if isinstance(cls, GlobalRef) and cls.literal and str(cls.module).startswith("__torch__"):
            return self.classes.get(cls.full_name, {})
        return None


def _file_access(archive: Any, name: str, text: str) -> None:
    """Code that creates or maps files when torch.jit.load runs it (its ``__setstate__``
    runs at load): dangerous, not merely code that needs trust."""
    found = _FILE_OPS_RE.search(text)
    if found is None:
        return
    line = text.count("\n", 0, found.start()) + 1
    archive.ckpt.findings.append(Finding(
        DANGEROUS, "script-file-access",
        f"its TorchScript calls from_file (line {line}): when torch.jit.load or torch.load "
        "runs the code, it creates or maps a file on disk", archive.label + name))
