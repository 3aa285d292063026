"""GGUF models split in several files: ``NAME-00001-of-00003.gguf`` ... as llama.cpp's
``gguf-split`` (and gguf-py's ``GGUFWriter(split_max_tensors=...)``) writes them.

Each split is a whole GGUF file with its own header and tensors; every split carries the
``split.no`` (0-based), ``split.count`` and ``split.tensors.count`` (tensors in the whole
model) keys, and only the first holds the model's other metadata. There is no index: which
tensors a split holds is in its own header only.

What it opens: a folder holding a set of splits (the first set by name when it holds
several). A split opened on its own is a single GGUF file, read as itself. The format is
``gguf``, as for one file: a split model is the same format cut in parts, and ``files``
lists the parts. Each split is read by :mod:`ckpt_inspector.core.formats.gguf_fmt`; each
tensor says its ``file``. A missing or unreadable split keeps its place: a damaged entry
named after it stands for the tensors it held (their names are only in it), with a warning
that says how many of the model's tensors are missing (from ``split.tensors.count``).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import NEEDS_TRUST, Finding
from ckpt_inspector.core.io import paths
from ckpt_inspector.core.io.urls import is_url
from ckpt_inspector.core.layouts._union import Union, file_size, read_file
from ckpt_inspector.core.tree import Checkpoint

NAME = "gguf"
SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<k>\d{5})-of-(?P<n>\d{5})\.gguf$")
MAX_SPLITS = 9_999  # llama.cpp's gguf-split counts to 99999 but refuses more than this
NO, COUNT, TENSORS = "split.no", "split.count", "split.tensors.count"


def split_sets(names: list[str]) -> list[list[str]]:
    """``PREFIX-0000K-of-0000N.gguf`` names grouped by (prefix, N), the set with the most
    files present first, then by prefix; each set lists every name from 1 to N, present
    or not."""
    found: Counter[tuple[str, int]] = Counter()
    for name in names:
        m = SPLIT.match(name)
        if m and 1 <= int(m["k"]) <= int(m["n"]) <= MAX_SPLITS:
            found[(m["prefix"], int(m["n"]))] += 1
    ranked = sorted(found, key=lambda pn: (-found[pn], pn))
    return [[f"{prefix}-{k:05d}-of-{n:05d}.gguf" for k in range(1, n + 1)]
            for prefix, n in ranked]


def detect(path: str) -> bool:
    if is_url(path) and paths.names_a_file(path):  # a split's URL: that split alone
        return False
    return paths.isdir(path) and bool(split_sets(paths.listdir(path)))


def open(path: str) -> Checkpoint:  # every layout has detect(path) and open(path)
    try:
        sets = split_sets(paths.listdir(path))
    except OSError as err:
        raise CheckpointError(f"cannot read the folder: {err}") from None
    if not sets:
        raise CheckpointError("holds no GGUF split (NAME-00001-of-0000N.gguf)")
    splits, others = sets[0], sets[1:]
    union = Union(path, NAME, NAME)
    ckpt = union.ckpt
    read: dict[str, Checkpoint] = {}
    lost: list[str] = []
    for rel in splits:
        part = _read_split(union, path, rel, first=rel == splits[0])
        if part is None:
            lost.append(rel)
        else:
            read[rel] = part
    _metadata(ckpt, splits, read)
    _check_splits(union, splits, read)
    _lost(union, splits, read, lost)
    for other in others:
        ckpt.warnings.append(f"the folder also holds the splits of {other}, not read (open "
                             "another folder holding only them to see that model)")
    return ckpt


def _read_split(union: Union, folder: str, rel: str, first: bool) -> Checkpoint | None:
    full = paths.join(folder, rel)
    if not paths.isfile(full):
        union.add_file(rel, 0, None, problem="missing")
        return None
    try:
        part = read_file(full)
    except CheckpointError as err:
        union.add_file(rel, file_size(full), err.partial.format if err.partial else None,
                       problem=str(err))
        if err.partial is not None:
            union.absorb(rel, err.partial)
        # llama.cpp runs no Python from a split, but the first split's metadata (the
        # model's) holds the chat template it renders (unsandboxed by older
        # llama-cpp-python), and a split past this reader's bounds may be one llama.cpp
        # reads: a first split not read is never vouched for; another is damage only
        union.ckpt.warnings.append(f"{rel} cannot be read ({err}): its tensors are shown "
                                   "damaged")
        union.ckpt.findings.append(Finding(
            NEEDS_TRUST if first else "info", "unreadable-file",
            f"{rel} cannot be read: {err}" + ("; the model's metadata (its chat template) "
                                              "was not checked" if first else ""),
            file=rel))
        return None
    union.add_file(rel, part.file_size, part.format)
    union.add(rel, part)
    return part


def _metadata(ckpt: Checkpoint, splits: list[str], read: dict[str, Checkpoint]) -> None:
    """The first split's metadata (the model's), the tensor types of all splits."""
    first = read.get(splits[0])
    if first is not None:
        ckpt.metadata.update(first.metadata)
    elif read:
        ckpt.warnings.append(f"{splits[0]}, the first split, holds the model's metadata: "
                             "not shown")
    for key in ("GGUF data offset", NO):  # the first file's own, not the model's
        ckpt.metadata.pop(key, None)
    types: Counter[str] = Counter()
    for part in read.values():
        types.update(part.metadata.get("GGUF tensor types") or {})
    ckpt.metadata["GGUF tensor types"] = dict(types)
    ckpt.metadata["splits"] = len(splits)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_splits(union: Union, splits: list[str], read: dict[str, Checkpoint]) -> None:
    """Where a split's own keys disagree with its name or with the others: a finding."""
    for k, rel in enumerate(splits):
        part = read.get(rel)
        if part is None:
            continue
        meta = part.metadata
        no, count = _int(meta.get(NO)), _int(meta.get(COUNT))
        if no is None or count is None:
            problem = f"{rel} has no {NO} / {COUNT} keys: it may not be a split of this model"
        elif (no, count) != (k, len(splits)):
            problem = (f"{rel} says it is split {no + 1} of {count}, its name says "
                       f"{k + 1} of {len(splits)}")
        else:
            continue
        union.ckpt.findings.append(Finding("info", "split-mismatch", problem, file=rel))
    totals = {_int(p.metadata.get(TENSORS)) for p in read.values()} - {None}
    if len(totals) > 1:
        union.ckpt.findings.append(Finding(
            "info", "split-mismatch",
            f"the splits disagree on how many tensors the model holds: "
            f"{', '.join(str(t) for t in sorted(totals))}"))


def _lost(union: Union, splits: list[str], read: dict[str, Checkpoint],
          lost: list[str]) -> None:
    """A damaged entry and a warning for each split not read, saying how many of the
    model's tensors are missing where the splits say how many it holds."""
    if not lost:
        return
    ckpt = union.ckpt
    total = next((t for rel in splits if rel in read
                  and (t := _int(read[rel].metadata.get(TENSORS))) is not None), None)
    shown = sum(len(part.root.children) for part in read.values() if part.root is not None)
    if total is not None and total >= shown:
        many = f"{total - shown:,} of the model's {total:,} tensors"
        where = "it held" if len(lost) == 1 else "they held"
        count = f": {many} are not shown ({where} them)"
    else:
        count = ": its tensors are not shown" if len(lost) == 1 else \
            ": their tensors are not shown"
    names = ", ".join(lost)
    for rel in lost:
        missing = not paths.isfile(paths.join(ckpt.path, rel))
        what = "is missing" if missing else "cannot be read"
        if missing:
            ckpt.warnings.append(f"{rel} is missing" + (count if len(lost) == 1 else ""))
        union.damaged(rel, rel, f"the split {rel} {what}: the names of the tensors it "
                                "held are only in it")
    if len(lost) > 1:
        ckpt.warnings.append(f"{len(lost)} splits not read ({names}){count}")
