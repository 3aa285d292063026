"""Hugging Face sharded checkpoints: ``model-00001-of-00003.safetensors`` ... and their index.

What it opens: a folder, or its index file (``model.safetensors.index.json``,
``pytorch_model.bin.index.json``, ``adapter_model.safetensors.index.json``,
``diffusion_pytorch_model.safetensors.index.fp16.json``, ...), whose ``weight_map`` says
which shard holds each key; or a folder without an index that holds
``PREFIX-0000K-of-0000N.{safetensors,bin}`` files, grouped the same way; or a model saved
unsharded, its folder holding ``model.safetensors`` (``pytorch_model.bin``,
``adapter_model.safetensors``, ...) beside ``config.json``. Where a folder holds
several, it reads what ``transformers`` loads first: safetensors before ``.bin``, the
``model`` prefix before others. ``config.json`` goes into the metadata.

Each shard is read by the single-file readers (a ``.bin`` shard is a torch zip or legacy
file: every pickle interpreted, none loaded); the verdict is the worst of the shards, each
finding naming its file. A missing or unreadable shard leaves the others readable, its
tensors (those the index lists) damaged, with a warning naming it. A key the index puts in
a shard that does not hold it, or a tensor of a shard the index does not list, is a finding.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import DANGEROUS, Finding
from ckpt_inspector.core.io import paths
from ckpt_inspector.core.io.opening import is_url
from ckpt_inspector.core.io.remote_fs import ServerError
from ckpt_inspector.core.layouts import _index_json, _remote_code
from ckpt_inspector.core.layouts._union import (
    TORCH_LOADED,
    Union,
    file_size,
    loadable_files,
    read_file,
)
from ckpt_inspector.core.progress import report
from ckpt_inspector.core.summary import counted
from ckpt_inspector.core.tree import Checkpoint

NAME = "hf-sharded"
INDEX = re.compile(r"^(?P<prefix>.+?)\.(?P<ext>safetensors|bin)\.index(?:\.(?P<variant>[^./]+))?"
                   r"\.json$")
SHARD = re.compile(r"^(?P<prefix>.+)-(?P<k>\d+)-of-(?P<n>\d+)\.(?P<ext>safetensors|bin)$")
MAX_JSON = 100_000_000  # an index (or config.json) larger than this is refused
MAX_SHARDS = 100_000
REMOTE_READS = 16  # shards of a remote model read at once (huggingface_hub uses 16 too)
CONFIG = "config.json"
# the one weights file of a model saved unsharded (transformers, PEFT, diffusers)
SINGLE = re.compile(r"^(?P<prefix>model|pytorch_model|adapter_model|diffusion_pytorch_model)"
                    r"(?:\.(?P<variant>[^./]+))?\.(?P<ext>safetensors|bin)$")


# -- which files ---------------------------------------------------------------------------
def _rank(prefix: str, ext: str, variant: str | None = None) -> tuple[Any, ...]:
    """What transformers / diffusers load first comes first."""
    return (ext != "safetensors", variant is not None, prefix not in ("model", "pytorch_model",
                                                                      "diffusion_pytorch_model"),
            prefix, variant or "")


def indexes(folder: str, names: list[str] | None = None) -> list[str]:
    """The index files in ``folder``, the one to read first."""
    names = paths.listdir(folder) if names is None else names
    found = [(m, n) for n in names if (m := INDEX.match(n)) and
             paths.isfile(paths.join(folder, n))]
    found.sort(key=lambda mn: _rank(mn[0]["prefix"], mn[0]["ext"], mn[0]["variant"]))
    return [n for _m, n in found]


def shard_groups(names: list[str]) -> list[list[str]]:
    """``PREFIX-0000K-of-0000N.EXT`` names grouped by (prefix, N, extension), the group to
    read first first; each group lists every name from 1 to N, present or not."""
    groups: dict[tuple[str, str, str], str] = {}
    for name in names:
        m = SHARD.match(name)
        if m and 1 <= int(m["n"]) <= MAX_SHARDS and 1 <= int(m["k"]) <= int(m["n"]):
            groups.setdefault((m["prefix"], m["n"], m["ext"]), m["k"])
    out = []
    for (prefix, n, ext), k in sorted(groups.items(), key=lambda g: _rank(g[0][0], g[0][2])):
        width = len(k)
        out.append([f"{prefix}-{i:0{width}d}-of-{n}.{ext}" for i in range(1, int(n) + 1)])
    return out


def singles(folder: str, names: list[str]) -> list[str]:
    """The unsharded weights files in ``folder`` (``model.safetensors``,
    ``pytorch_model.bin``, ...), the one transformers would load first first."""
    found = [(m, n) for n in names if (m := SINGLE.match(n)) and
             paths.isfile(paths.join(folder, n))]
    found.sort(key=lambda mn: _rank(mn[0]["prefix"], mn[0]["ext"], mn[0]["variant"]))
    return [n for _m, n in found]


def detect(path: str) -> bool:
    if is_url(path) and paths.names_a_file(path):  # no request for a file's URL
        return bool(INDEX.match(paths.basename(path)))
    if paths.isdir(path):
        names = paths.listdir(path)
        return bool(indexes(path, names) or shard_groups(names) or singles(path, names))
    return bool(INDEX.match(paths.basename(path))) and paths.isfile(path)


# -- reading -------------------------------------------------------------------------------
def read_json(path: str, what: str) -> Any:
    raw = paths.read_bytes(path, MAX_JSON)
    try:  # twice as fast as json on an index of 100,000s of names; in pieces if large
        return _index_json.loads(raw)
    except orjson.JSONDecodeError:
        pass  # what Python's json (the loaders' own) still accepts: NaN, huge integers
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{what} is not valid JSON: {err}") from None


def _weight_map(index: Any, name: str) -> dict[str, str]:
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
        raise CheckpointError(f"{name} has no weight_map object")
    weight_map = index["weight_map"]
    if set(map(type, weight_map.values())) - {str}:  # in C: 100,000s of names
        bad = next(k for k, v in weight_map.items() if not isinstance(v, str))
        raise CheckpointError(f"{name}: the file of {bad!r} is not a string")
    spellings = set(weight_map.values())
    tidy = {v: _tidy(v) for v in spellings if "./" in v or "//" in v or v.endswith("/.")}
    if tidy:  # "./big.bin", "././big.bin": one file to the loader, read once here
        weight_map = {k: tidy.get(v, v) for k, v in weight_map.items()}
    return weight_map


def _tidy(rel: str) -> str:
    """``rel`` without its empty and ``.`` parts, which name the same file to the loader's
    os.path.join (``..`` stays: through a symlinked folder it leads elsewhere)."""
    if rel.startswith(("/", "\\")):
        return rel
    return "/".join(p for p in rel.split("/") if p not in ("", ".")) or rel


def _inside(rel: str) -> bool:
    """A shard name that stays inside the folder (loaders join it to the folder's path)."""
    return bool(rel) and "\0" not in rel and not os.path.isabs(rel) and \
        ".." not in rel.replace("\\", "/").split("/")


@dataclass
class _Plan:
    folder: str
    index: str | None  # its name, None for shards found by their names
    shards: list[str]  # in the order read
    weight_map: dict[str, str] | None = None
    metadata: Any = None  # the index's "metadata"
    others: list[str] = field(default_factory=list)  # indexes or groups not read
    # the folder's other files that loaders torch.load: not shown, but read for the verdict
    # (the .bin weights transformers loads with use_safetensors=False, a Trainer
    # checkpoint's optimizer.pt, scheduler.pt and rng_state.pth on resume)
    pickled_others: list[str] = field(default_factory=list)
    # folders inside it (or itself) that another loader reads as a whole: a DCP folder (a
    # Trainer under FSDP saves pytorch_model_fsdp_0/), a DeepSpeed one (``latest``)
    nested: list[tuple[str, str]] = field(default_factory=list)


# written for reference beside a Trainer checkpoint (a pickled TrainingArguments, which
# needs trust by itself): neither from_pretrained nor a resume loads it
NOT_LOADED = frozenset({"training_args.bin"})
MAX_OTHERS = 10_000  # other files read for the verdict (more: the rest named, not read)


def _plan(path: str) -> _Plan:
    plan = _plan_of(path)
    if paths.isdir(path):
        read = set(plan.shards) | NOT_LOADED
        plan.pickled_others = [n for n in _loadable(path, plan.nested) if n not in read]
        listed = set(plan.pickled_others)
        plan.pickled_others += [n for n in _other_index_shards(path, plan)
                                if n not in read and n not in listed]
    return plan


def _other_index_shards(folder: str, plan: _Plan) -> list[str]:
    """The shards another (non-safetensors) index of the folder names, whatever their
    names end with: from_pretrained(use_safetensors=False) torch.loads each of them."""
    out: list[str] = []
    for other in plan.others:
        if not other.endswith(".index.json") or other.endswith(".safetensors.index.json"):
            continue
        try:
            names = set(_weight_map(read_json(paths.join(folder, other), other), other)
                        .values())
        except (CheckpointError, OSError):
            continue  # a broken second index is named among the folder's other files
        out += sorted(n for n in names if _inside(n) and paths.isfile(paths.join(folder, n)))
    return out[:MAX_OTHERS]


NESTED = {".metadata": "dcp", "latest": "deepspeed-zero", "latest_universal": "deepspeed-zero"}


def _loadable(folder: str, nested: list[tuple[str, str]] | None = None) -> list[str]:
    """The files of ``folder`` that loaders torch.load, by name; in a local folder also in
    its subfolders, two deep (a Trainer checkpoint saved with DeepSpeed keeps its model
    states in ``global_step3/``). ``nested`` gets (folder, layout) of each folder there that
    a DCP or DeepSpeed loader reads as a whole."""
    if is_url(folder):
        return [n for n in paths.listdir(folder) if n.endswith(TORCH_LOADED)]

    def layouts(rel: str, files: list[str]) -> None:
        if nested is not None:
            nested.extend((rel, kind) for kind in sorted({NESTED[f] for f in files
                                                          if f in NESTED}))

    return loadable_files(folder, 2, MAX_OTHERS, layouts)


def _plan_of(path: str) -> _Plan:
    if not paths.isdir(path):
        folder, index = paths.dirname(path), paths.basename(path)
        others: list[str] = []
    else:
        folder, names = path, paths.listdir(path)
        found = indexes(path, names)
        groups = shard_groups(names)
        if not found and groups:
            first, *rest = groups
            return _Plan(folder, None, first, others=[g[0] for g in rest])
        if not found:  # a model saved in one file, beside its config
            first, *rest = singles(path, names)
            return _Plan(folder, None, [first], others=rest)
        index, others = found[0], found[1:]
    data = read_json(paths.join(folder, index), index)
    weight_map = _weight_map(data, index)
    shards = sorted(set(weight_map.values()))
    if len(shards) > MAX_SHARDS:
        raise CheckpointError(f"{index} names {len(shards):,} files: more than the "
                              f"{MAX_SHARDS:,} ckpt-inspector reads")
    return _Plan(folder, index, shards, weight_map, data.get("metadata"), others)


def open(path: str) -> Checkpoint:  # every layout has detect(path) and open(path)
    try:
        plan = _plan(path)
    except OSError as err:
        raise CheckpointError(f"cannot read the index: {err}") from None
    return read_plan(path, plan, NAME)


def plan_files(folder: str, files: list[str], index: str | None = None) -> _Plan:
    """What to read: the index ``index`` (a name in ``folder``) and the shards it lists, or,
    without one, the ``files`` given (the first of them; the others are named as not read).
    For a layout that chooses its files itself (a PEFT adapter's ``adapter_model.*``)."""
    if index is not None:
        return _plan(paths.join(folder, index))
    first, *rest = files
    return _Plan(folder, None, [first], others=rest)


def read_plan(path: str, plan: _Plan, fmt: str) -> Checkpoint:
    """Read the files of ``plan`` as one checkpoint of format ``fmt`` (``path``: what was
    opened)."""
    union = Union(path, fmt, fmt)
    ckpt = union.ckpt
    if plan.index is not None:
        size = file_size(paths.join(plan.folder, plan.index))
        union.add_file(plan.index, size, "hf-index")
        if is_url(plan.folder):  # read whole, in one request
            union.count_transfer({"size": size, "requests": 1, "bytes": size})
        ckpt.metadata["index"] = plan.index
        if plan.metadata is not None:
            ckpt.metadata["index metadata"] = plan.metadata
    ckpt.metadata["shards"] = len(plan.shards)
    if plan.weight_map is not None and not plan.weight_map:
        ckpt.warnings.append(f"{plan.index} lists no tensor")
    promised = _Promised(plan.weight_map)
    with _reads(plan) as reads:
        for k, rel in enumerate(plan.shards):
            report("files read", k, len(plan.shards), rel)
            _read_shard(union, plan.folder, rel, promised, reads.get(rel))
        report("files read", len(plan.shards), len(plan.shards))
    _config(ckpt, plan.folder)
    _remote_code.check(ckpt, plan.folder, read_json)
    for k, rel in enumerate(plan.pickled_others[:MAX_OTHERS]):
        report("other files scanned", k, len(plan.pickled_others), rel)
        _scan_only(union, plan.folder, rel)
    for rel, kind in plan.nested:
        _scan_layout(union, plan.folder, rel, kind)
    rest = [n for n in plan.pickled_others if n not in plan.others]
    if len(plan.pickled_others) > MAX_OTHERS:
        ckpt.findings.append(Finding(
            "needs-trust", "unread-files", f"the folder holds more than {MAX_OTHERS:,} files "
            "that loaders torch.load: only the first were read for the verdict"))
    if rest:
        ckpt.warnings.append(
            f"{counted(len(rest), 'other file')} of the folder that loaders torch.load "
            f"({', '.join(rest[:3])}{', …' if len(rest) > 3 else ''}) read for the verdict, "
            "not shown: open one on its own to see it")
    for other in plan.others:
        scanned = " (its pickles are read for the verdict)" if other.endswith(
            (*TORCH_LOADED, ".bin.index.json")) and plan.pickled_others else ""
        ckpt.warnings.append(f"the folder also holds {other}, not shown{scanned}: open it "
                             "on its own to see those weights")
    return ckpt


def _scan_layout(union: Union, folder: str, rel: str, kind: str) -> None:
    """A folder inside (or the folder itself) that a DCP or DeepSpeed loader reads whole
    (a Trainer resume under FSDP or DeepSpeed does): read with that layout, for the
    verdict only, as those loaders resolve its files (DeepSpeed's ``latest`` tag), unless
    the folder's own sweep read those files already."""
    from ckpt_inspector.core.layouts import _deepspeed_files as df
    from ckpt_inspector.core.layouts import dcp, deepspeed

    full = folder if rel == "." else paths.join(folder, rel)
    prefix = "" if rel == "." else f"{rel}/"
    if kind != "dcp":
        try:
            tag = df.read_latest(full)
        except CheckpointError:
            tag = None  # the layout says what is wrong with it
        swept = tag is not None and df.inside(tag) and "/" not in tag.strip("/") and \
            prefix.count("/") + 1 <= 2 and not os.path.islink(paths.join(full, tag))
        if swept and not paths.isfile(paths.join(full, "latest_universal")):
            return  # its files are among those read for the verdict already
    layout = dcp if kind == "dcp" else deepspeed
    try:
        part = layout.open(full)
    except ServerError:
        raise
    except CheckpointError as err:
        name = prefix or f"({kind})"
        union.unreadable(name, full, err, shown=False)
        if isinstance(err, df.OutsideError):  # DeepSpeed would load whatever is there
            union.ckpt.findings.append(Finding(DANGEROUS, "path-outside", str(err), file=name))
        return
    for f in part.files:
        union.ckpt.verdict_files.append({**f, "path": prefix + str(f.get("path"))})
    union.absorb_layout(prefix, part)


def _scan_only(union: Union, folder: str, rel: str) -> None:
    """A file of the folder that loaders torch.load but is not shown: its pickles go to the
    verdict (one that cannot be read whole keeps the verdict from being safe)."""
    full = paths.join(folder, rel)
    try:
        part = read_file(full)
    except ServerError:
        raise
    except CheckpointError as err:
        partial = err.partial
        union.ckpt.verdict_files.append({
            "path": rel, "size": partial.file_size if partial else None,
            "format": partial.format if partial else None, "problem": str(err)})
        union.unreadable(rel, full, err, shown=False)
        return
    union.ckpt.verdict_files.append({"path": rel, "size": part.file_size,
                                     "format": part.format})
    union.absorb(rel, part)


class _Promised:
    """What the index puts in each file (``weight_map``: key -> file; None without an
    index). The keys of one file are grouped only where they are needed (a file missing,
    unreadable, or holding other keys than the index says): a consistent model is checked
    by counts and set operations in C."""

    def __init__(self, weight_map: dict[str, str] | None):
        self.map = weight_map
        self.counts = Counter(weight_map.values()) if weight_map else Counter()
        self._groups: dict[str, list[str]] | None = None

    def keys(self, rel: str) -> list[str] | None:
        """The keys the index puts in ``rel``, in its order (None without an index)."""
        if self.map is None:
            return None
        if self._groups is None:
            self._groups = {}
            for key, file in self.map.items():
                self._groups.setdefault(file, []).append(key)
        return self._groups.get(rel, [])

    def agrees(self, rel: str, held: list[str]) -> bool:
        """Whether ``rel`` holds exactly the keys the index puts in it (``held`` are
        distinct: a file's top-level keys)."""
        assert self.map is not None
        return self.counts.get(rel, 0) == len(held) == len(set(held)) and \
            (not held or set(map(self.map.get, held)) == {rel})


@contextmanager
def _reads(plan: _Plan) -> Iterator[dict[str, Future[Checkpoint]]]:
    """The shards of a remote model, read :data:`REMOTE_READS` at a time (each is a few
    requests that mostly wait on the network); nothing for a local one."""
    if not is_url(plan.folder):
        yield {}
        return
    with ThreadPoolExecutor(REMOTE_READS, thread_name_prefix="shard") as pool:
        # each in a copy of this context: a cancel token set for the open reaches them
        futures = {rel: pool.submit(contextvars.copy_context().run, read_file,
                                    paths.join(plan.folder, rel))
                   for rel in plan.shards if _inside(rel)}
        try:
            yield futures
        finally:
            for future in futures.values():
                future.cancel()


def _read_shard(union: Union, folder: str, rel: str, promised: _Promised,
                read: Future[Checkpoint] | None = None) -> None:
    """Read one shard into ``union``; ``promised`` says what the index puts in it; ``read``
    is the shard already being read (a remote model's)."""
    ckpt = union.ckpt
    full = paths.join(folder, rel)
    if not _inside(rel):
        union.add_file(rel, 0, None, problem="outside the folder: not read")
        ckpt.findings.append(Finding(
            DANGEROUS, "shard-outside-folder",
            f"the index names {rel!r}, a file outside the model's folder: loading the "
            "model would read it", file=rel))
        _damage(union, rel, promised.keys(rel), "the index puts it outside the model's folder")
        return
    if not paths.isfile(full):
        union.add_file(rel, 0, None, problem="missing")
        keys = promised.keys(rel)
        what = (f": its {counted(len(keys), 'tensor')} "
                f"{'is' if len(keys) == 1 else 'are'} shown damaged") if keys else ""
        ckpt.warnings.append(f"{rel} is missing{what}")
        _damage(union, rel, keys, f"its file {rel} is missing")
        return
    try:
        part = read.result() if read is not None else read_file(full)
    except ServerError:
        raise  # the server's failure, not this file's: every shard would fail alike
    except CheckpointError as err:
        union.add_file(rel, file_size(full), err.partial.format if err.partial else None,
                       problem=str(err))
        union.unreadable(rel, full, err)
        _damage(union, rel, promised.keys(rel), f"its file {rel} cannot be read: {err}")
        return
    union.add_file(rel, part.file_size, part.format)
    held = union.add(rel, part, promised.map)
    if promised.map is not None and not promised.agrees(rel, held):
        _check_index(union, rel, promised.keys(rel) or [], held, promised.map)


def _damage(union: Union, rel: str, keys: list[str] | None, problem: str) -> None:
    for key in keys or ():
        union.damaged(key, rel, problem)


def _check_index(union: Union, rel: str, keys: list[str], held: list[str],
                 weight_map: dict[str, str]) -> None:
    """Where the index and the shard disagree."""
    ckpt = union.ckpt
    present, listed = set(held), set(keys)  # set differences in C: 1,000s of keys a shard
    absent = [k for k in keys if k not in present] if listed - present else []
    if absent:
        ckpt.findings.append(Finding(
            "info", "index-mismatch",
            f"the index puts {counted(len(absent), 'key')} in {rel} that it does not hold, e.g. "
            f"{absent[0]!r}", file=rel))
        _damage(union, rel, absent, f"the index puts it in {rel}, which does not hold it")
    # ``keys`` are those the index puts in ``rel``: the others it holds are not listed there
    unlisted = [k for k in held if k not in listed] if present - listed else []
    if unlisted:
        ckpt.findings.append(Finding(
            "info", "index-mismatch",
            f"{rel} holds {counted(len(unlisted), 'key')} the index does not put there, e.g. "
            f"{unlisted[0]!r}", file=rel))


def _config(ckpt: Checkpoint, folder: str) -> None:
    path = paths.join(folder, CONFIG)
    if not paths.isfile(path):
        return
    try:
        ckpt.metadata["config"] = read_json(path, CONFIG)
    except (CheckpointError, OSError) as err:
        if is_url(path) and "(404)" in str(err):
            return  # over HTTP nothing lists the folder: it is simply not there
        ckpt.warnings.append(f"{CONFIG} cannot be read: {err}")
