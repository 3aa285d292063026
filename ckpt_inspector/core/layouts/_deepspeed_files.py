"""The files of a DeepSpeed ZeRO checkpoint: which folder, which tag, each ``.pt`` read by the
single-file reader (its pickles and findings go to the verdict, naming the file) and the
plain values DeepSpeed saved in it (``param_shapes``, ``zero_stage``...), taken from the
pickle's inert value, never from loading it.

At a URL the folders go through :mod:`~ckpt_inspector.core.io.paths` (a listing on S3, GCS
and the Hub) and the files are read concurrently, :data:`REMOTE_READS` at a time. Plain
HTTP lists nothing: the URL of the root's ``latest`` or of rank 0's model states file is
opened, and the other files are found from what that file says (:meth:`Reader.discover`).
"""

from __future__ import annotations

import builtins
import contextvars
import os
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io import paths
from ckpt_inspector.core.io.opening import is_url
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
REMOTE_READS = 16  # rank files of a remote checkpoint read at once
MAX_PROBED = 1024  # ranks tried one by one where no file says how many there are (HTTP)
STATES = "mp_rank_00_model_states.pt"  # stages 1-2 (and without ZeRO)


def states3(rank: int) -> str:
    """Rank ``rank``'s model states file at stage 3."""
    return f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"


def optim_name(prefix: str, rank: int) -> str:
    return f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


def opens_checkpoint(name: str) -> bool:
    """A file's name whose URL opens the whole checkpoint (no listing needed): the root's
    ``latest``, or rank 0's model states file in a tag folder."""
    m = MODEL.match(name)
    return name == LATEST or (m is not None and int(m["mp"]) == 0 and int(m["dp"] or 0) == 0)


# -- which folder ----------------------------------------------------------------------------
def is_tag(folder: str, names: list[str] | None = None) -> bool:
    names = paths.listdir(folder) if names is None else names
    return any(MODEL.match(n) for n in names)


def inside(rel: str) -> bool:
    return bool(rel) and "\0" not in rel and not os.path.isabs(rel) and \
        ".." not in rel.replace("\\", "/").split("/")


def read_latest(folder: str, transfer: dict[str, int] | None = None,
                name: str = LATEST) -> str | None:
    """The tag the ``latest`` file (or ``name``) names, or None where there is no such
    file; at a URL, what reading it took is added to ``transfer``."""
    path = paths.join(folder, name)
    if not paths.isfile(path):
        return None
    if is_url(path):
        raw = _remote_latest(path, transfer)
    else:
        with builtins.open(path, "rb") as f:  # this module's open() reads a layout
            raw = f.read(MAX_LATEST + 1)
    if len(raw) > MAX_LATEST:
        raise CheckpointError(f"{name} is over {MAX_LATEST:,} bytes: not a tag")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CheckpointError(f"{name} is not text") from None


def _remote_latest(url: str, transfer: dict[str, int] | None) -> bytes:
    from ckpt_inspector.core.io.remote import RemoteSource

    try:
        src = RemoteSource(url)
    except CheckpointError as err:
        raise CheckpointError(f"{LATEST}: {err}") from None
    raw = src.read(0, min(len(src), MAX_LATEST + 1))
    if transfer is not None:
        for k, v in src.transfer.to_json().items():
            transfer[k] = transfer.get(k, 0) + v
    return raw


def detect(path: str) -> bool:
    if is_url(path) and opens_checkpoint(paths.basename(path)):
        return True  # no request: the other files are found from it (plain HTTP lists none)
    if is_url(path) and paths.names_a_file(path):
        return False
    if not paths.isdir(path):
        return False
    names = paths.listdir(path)
    if is_tag(path, names):
        return True
    if LATEST not in names:
        return False
    try:
        tag = read_latest(path)
    except (CheckpointError, OSError):
        return SCRIPT in names
    if tag and inside(tag) and paths.isdir(paths.join(path, tag)):
        return is_tag(paths.join(path, tag))
    return SCRIPT in names


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
    """The files of one tag folder, each read once (at a URL, concurrently: see
    :meth:`reading`)."""

    def __init__(self, path: str, name: str):
        self.union = Union(path, name, name)
        self.ckpt = self.union.ckpt
        self.remote = is_url(path)
        self.latest_transfer: dict[str, int] = {}
        self.first: str | None = None  # the file a URL names, where nothing lists its folder
        if self.remote and opens_checkpoint(paths.basename(path)):
            parent = paths.dirname(path)
            if paths.isdir(parent):  # a listing (S3, GCS, the Hub): as the folder
                path = parent
            else:
                self.first = paths.basename(path)
        if self.first is None:
            self.root_folder, self.tag = where(path, self.latest_transfer)
        elif self.first == LATEST:
            self.root_folder, self.tag = paths.dirname(path), _tag(
                read_latest(paths.dirname(path), self.latest_transfer))
        else:
            self.root_folder, self.tag = paths.dirname(path), None
        self.folder = paths.join(self.root_folder, self.tag) if self.tag else self.root_folder
        self.prefix = f"{self.tag}/" if self.tag else ""
        self._files: dict[str, File] = {}
        self._reads: dict[str, Future[Checkpoint | CheckpointError]] = {}
        self._pool: ThreadPoolExecutor | None = None

    # -- at a URL ------------------------------------------------------------------------
    @contextmanager
    def reading(self) -> Iterator[None]:
        """At a URL, the files :meth:`prefetch` names read in threads while the model is put
        together; nothing for a local folder (each file read when asked for)."""
        if not self.remote:
            yield
            return
        with ThreadPoolExecutor(REMOTE_READS, thread_name_prefix="zero") as pool:
            self._pool = pool
            try:
                yield
            finally:
                self._pool = None
                for future in self._reads.values():
                    future.cancel()

    def prefetch(self, names: list[str]) -> None:
        """Start reading ``names`` (at a URL, inside :meth:`reading`)."""
        if self._pool is None:
            return
        for name in names:
            full = paths.join(self.folder, name)
            if name not in self._reads and name not in self._files and paths.isfile(full):
                # in a copy of this context: a cancel token set for the open reaches it
                self._reads[name] = self._pool.submit(contextvars.copy_context().run,
                                                      _read, full)

    def found(self, name: str) -> bool:
        """Whether the tag folder holds ``name`` (without a listing: read it; a 404 says
        no)."""
        full = paths.join(self.folder, name)
        if not paths.isfile(full):
            return False
        self.prefetch([name])
        return not _absent(self._outcome(name))

    def _outcome(self, name: str) -> Checkpoint | CheckpointError:
        future = self._reads.get(name)
        return future.result() if future is not None else _read(paths.join(self.folder, name))

    def names(self) -> list[str]:
        """The tag folder's file names: listed, or found from what its files say."""
        if self.first is None:
            return sorted(paths.listdir(self.folder))
        return self.discover()

    def discover(self) -> list[str]:
        """The files of a tag folder nothing lists (plain HTTP), found from what rank 0's
        model states file says, each name tried (a 404 meaning absent).

        What a missing listing costs: a 404 for ``mp_rank_00_model_states.pt`` before
        stage 3's ``zero_pp_rank_0_...`` where ``latest`` was opened; the optimizer files'
        prefix is the one the config implies (``bf16_`` where bf16 is enabled, as
        DeepSpeed names them) -- a wrong guess costs a 404 per rank, then one for the other
        prefix's rank 0; where no file says how many ranks there are (no ``dp_world_size``
        nor ``partition_count``), ranks are tried one at a time up to the first 404 (at
        most :data:`MAX_PROBED`); and files beyond the rank count (which a listing would
        show) are not seen."""
        tries = [self.first] if self.first != LATEST else [STATES, states3(0)]
        model = next((n for n in tries if self.found(n)), None)
        if model is None:
            where = f"the tag folder {self.tag!r} ({LATEST} names it)" if self.tag else \
                "the folder"
            raise CheckpointError(f"{where} holds no {' nor '.join(tries)}")
        mv = self.file(model).value
        config = mv.get("ds_config") if isinstance(mv.get("ds_config"), dict) else {}
        bf16 = config.get("bf16") if isinstance(config.get("bf16"), dict) else {}
        world = _count(mv.get("dp_world_size"))
        optims: list[str] = []
        for i, prefix in enumerate(["bf16_", ""] if bf16.get("enabled") else ["", "bf16_"]):
            names = [optim_name(prefix, r) for r in range(world or 1)]
            self.prefetch(names if i == 0 else names[:1])
            if self.found(names[0]):
                optims = names
                break
        if optims and world is None:
            world = _count(_partitions(self.file(optims[0]).value)) or self._probe(optims[0])
            optims = [optim_name(optims[0].partition("zero_pp_rank_")[0], r)
                      for r in range(world)]
        models = [states3(r) for r in range(world or 1)] if model != STATES else [model]
        self.prefetch(models + optims)
        return [n for n in models + optims if self.found(n)]

    def _probe(self, first: str) -> int:
        prefix = first.partition("zero_pp_rank_")[0]
        rank = 1
        while rank < MAX_PROBED and self.found(optim_name(prefix, rank)):
            rank += 1
        return rank

    # -- one file ------------------------------------------------------------------------
    def file(self, name: str) -> File:
        """Read one file of the tag folder (the verdict takes its pickles and findings)."""
        if name in self._files:
            return self._files[name]
        rel, full = self.prefix + name, paths.join(self.folder, name)
        f = self._files[name] = File(rel, full)
        outcome = self._outcome(name) if paths.isfile(full) else None
        if outcome is None or (self.remote and _absent(outcome)):
            f.problem = f"its file {rel} is missing"
            self.union.add_file(rel, 0, None, problem="missing")
            self.ckpt.warnings.append(f"{rel} is missing: what it holds is shown damaged")
            return f
        if isinstance(outcome, CheckpointError):
            err = outcome
            f.problem = f"its file {rel} cannot be read: {err}"
            size = (err.partial.file_size if err.partial else 0) if self.remote else \
                file_size(full)  # (no request to ask a remote file's size again)
            self.union.add_file(rel, size, err.partial.format if err.partial else None,
                                problem=str(err))
            self.union.unreadable(rel, full, err)
            return f
        part = outcome
        self.union.add_file(rel, part.file_size, part.format)
        self.union.absorb(rel, part)
        self.union.count_transfer(part.metadata.get("remote"))
        f.part = part
        value = next((r.result.value for r in part.pickles
                      if isinstance(getattr(r.result, "value", None), dict)), None)
        f.value = plain(value) if isinstance(value, dict) else {}
        for node in part.root.walk():
            if node.tensor is not None:
                node.tensor.file = rel
        return f


def _read(full: str) -> Checkpoint | CheckpointError:
    try:
        return read_file(full)
    except CheckpointError as err:
        return err


def _absent(outcome: Checkpoint | CheckpointError | None) -> bool:
    """A file that is not there: a 404 where nothing lists the folder."""
    return isinstance(outcome, CheckpointError) and "(404)" in str(outcome)


def _count(value: Any) -> int | None:
    return value if type(value) is int and 1 <= value <= MAX_RANKS else None


def _partitions(value: dict[str, Any]) -> Any:
    """``partition_count`` of an optimizer file (a list per group at stages 1-2)."""
    osd = value.get("optimizer_state_dict")
    count = osd.get("partition_count") if isinstance(osd, dict) else None
    if isinstance(count, list) and count and all(type(c) is int for c in count):
        return max(count)
    return count


class OutsideError(CheckpointError):
    """``latest`` names a folder outside the checkpoint's: DeepSpeed joins it unchecked and
    loads what is there."""


def _tag(tag: str | None) -> str:
    if not tag:
        raise CheckpointError(f"{LATEST} names no tag folder")
    if not inside(tag):
        raise OutsideError(f"{LATEST} names {tag!r}, outside the checkpoint's folder")
    return tag


def where(path: str, transfer: dict[str, int] | None = None) -> tuple[str, str | None]:
    """(the folder opened, the tag folder under it that ``latest`` names, if any)."""
    if is_tag(path):
        return path, None
    tag = _tag(read_latest(path, transfer))
    if not paths.isdir(paths.join(path, tag)):
        raise CheckpointError(f"{LATEST} names the tag folder {tag!r}, which is not there")
    if not is_tag(paths.join(path, tag)):
        raise CheckpointError(f"{LATEST} names {tag!r}, a folder with no "
                              "*_model_states.pt file")
    return path, tag
