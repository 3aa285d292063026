"""The files of a DeepSpeed ZeRO checkpoint: which folder, which tag, each ``.pt`` read by the
single-file reader (its pickles and findings go to the verdict, naming the file) and the
plain values DeepSpeed saved in it (``param_shapes``, ``zero_stage``...), taken from the
pickle's inert value, never from loading it."""

from __future__ import annotations

import builtins
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.layouts._union import Union, file_size, read_file
from ckpt_inspector.core.pickle.values import Call, SafeKey
from ckpt_inspector.core.tree import Checkpoint, Node

LATEST = "latest"
SCRIPT = "zero_to_fp32.py"
MODEL = re.compile(r"^(?:zero_pp_rank_(?P<dp>\d+)_)?mp_rank_(?P<mp>\d+)_model_states\.pt$")
OPTIM = re.compile(r"^(?P<prefix>.*?)zero_pp_rank_(?P<dp>\d+)_mp_rank_(?P<mp>\d+)"
                   r"_optim_states\.pt$")
MAX_LATEST = 4096
MAX_RANKS = 100_000
MAX_DEPTH = 40


# -- which folder ----------------------------------------------------------------------------
def is_tag(folder: str, names: list[str] | None = None) -> bool:
    names = os.listdir(folder) if names is None else names
    return any(MODEL.match(n) for n in names)


def inside(rel: str) -> bool:
    return bool(rel) and "\0" not in rel and not os.path.isabs(rel) and \
        ".." not in rel.replace("\\", "/").split("/")


def read_latest(folder: str) -> str | None:
    """The tag the ``latest`` file names, or None where there is no such file."""
    path = os.path.join(folder, LATEST)
    if not os.path.isfile(path):
        return None
    with builtins.open(path, "rb") as f:  # this module's open() reads a layout
        raw = f.read(MAX_LATEST + 1)
    if len(raw) > MAX_LATEST:
        raise CheckpointError(f"{LATEST} is over {MAX_LATEST:,} bytes: not a tag")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CheckpointError(f"{LATEST} is not text") from None


# -- inert values ----------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """The pickle's inert value as plain Python where DeepSpeed saved plain data:
    ``OrderedDict`` -> dict, ``torch.Size`` -> tuple, ``ZeroStageEnum`` -> int. An object the
    pickle uses in several places is converted once (its result is shared), so the work is
    linear in the pickle's size however it nests shared references; a cycle becomes None."""
    return _Plain().convert(value, 0)


class _Plain:
    def __init__(self) -> None:
        self.done: dict[int, Any] = {}  # id of a converted object -> its plain value
        self.busy: set[int] = set()  # ids being converted (a cycle)

    def convert(self, value: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            return None
        if isinstance(value, SafeKey):
            return value.value
        if not isinstance(value, (Call, dict, list, tuple)):
            return value
        vid = id(value)  # the pickle's value is alive while it is read: ids are stable
        if vid in self.done:
            return self.done[vid]
        if vid in self.busy:
            return None
        self.busy.add(vid)
        try:
            out = self._convert(value, depth)
        finally:
            self.busy.discard(vid)
        self.done[vid] = out
        return out

    def _convert(self, value: Any, depth: int) -> Any:
        step = depth + 1
        if isinstance(value, Call):
            name = value.func_name or ""
            args = value.args if isinstance(value.args, tuple) else ()
            if name == "collections.OrderedDict":
                out: dict[Any, Any] = {}
                if args and isinstance(args[0], (list, tuple)):
                    out.update((self.convert(k, step), self.convert(v, step)) for k, v in
                               (p for p in args[0] if isinstance(p, tuple) and len(p) == 2))
                out.update((self.convert(k, step), self.convert(v, step))
                           for k, v in value.dict_items or ())
                return out
            if name == "torch.Size" and args:
                return self.convert(args[0], step)
            if name.endswith("ZeroStageEnum") and args:
                return args[0]
            return value
        if isinstance(value, dict):
            return {self.convert(k, step): self.convert(v, step) for k, v in value.items()}
        return type(value)(self.convert(v, step) for v in value)


def shape_of(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, (tuple, list)) and all(type(v) is int and v >= 0 for v in value):
        return tuple(value)
    return None


def shapes_of(value: Any) -> dict[str, tuple[int, ...]] | None:
    if not isinstance(value, dict):
        return None
    out = {k: s for k, v in value.items() if isinstance(k, str) and (s := shape_of(v)) is not None}
    return out if len(out) == len(value) else None


def child(node: Node | None, *keys: Any) -> Node | None:
    for key in keys:
        if node is None:
            return None
        node = next((c for c in node.children if c.key == key), None)
    return node


# -- the files ---------------------------------------------------------------------------------
@dataclass
class File:
    rel: str
    full: str
    part: Checkpoint | None = None
    problem: str | None = None
    value: dict[str, Any] = field(default_factory=dict)  # the pickle's top level, plain

    @property
    def root(self) -> Node | None:
        return self.part.root if self.part is not None else None


def rank_of(name: str, pattern: re.Pattern[str]) -> tuple[int, int]:
    m = pattern.match(name)
    assert m is not None
    return int(m["mp"]), int(m["dp"] or 0)


class Reader:
    def __init__(self, path: str, name: str):
        self.union = Union(path, name, name)
        self.ckpt = self.union.ckpt
        self.root_folder, self.tag = where(path)
        self.folder = os.path.join(self.root_folder, self.tag) if self.tag else self.root_folder
        self.prefix = f"{self.tag}/" if self.tag else ""

    def file(self, name: str) -> File:
        """Read one file of the tag folder (the verdict takes its pickles and findings)."""
        rel, full = self.prefix + name, os.path.join(self.folder, name)
        f = File(rel, full)
        if not os.path.isfile(full):
            f.problem = f"its file {rel} is missing"
            self.union.add_file(rel, 0, None, problem="missing")
            self.ckpt.warnings.append(f"{rel} is missing: what it holds is shown damaged")
            return f
        try:
            part = read_file(full)
        except CheckpointError as err:
            f.problem = f"its file {rel} cannot be read: {err}"
            self.union.add_file(rel, file_size(full), err.partial.format if err.partial
                                else None, problem=str(err))
            self.union.unreadable(rel, full, err)
            return f
        self.union.add_file(rel, part.file_size, part.format)
        self.union.absorb(rel, part)
        f.part = part
        value = next((r.result.value for r in part.pickles
                      if isinstance(getattr(r.result, "value", None), dict)), None)
        f.value = plain(value) if isinstance(value, dict) else {}
        for node in part.root.walk():
            if node.tensor is not None:
                node.tensor.file = rel
        return f


def where(path: str) -> tuple[str, str | None]:
    """(the folder opened, the tag folder under it that ``latest`` names, if any)."""
    if is_tag(path):
        return path, None
    tag = read_latest(path)
    if not tag:
        raise CheckpointError(f"{LATEST} names no tag folder")
    if not inside(tag):
        raise CheckpointError(f"{LATEST} names {tag!r}, outside the checkpoint's folder")
    if not os.path.isdir(os.path.join(path, tag)):
        raise CheckpointError(f"{LATEST} names the tag folder {tag!r}, which is not there")
    if not is_tag(os.path.join(path, tag)):
        raise CheckpointError(f"{LATEST} names {tag!r}, a folder with no "
                              "*_model_states.pt file")
    return path, tag


