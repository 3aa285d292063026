"""One :class:`Checkpoint` made of the checkpoints of several files: what every layout whose
files each hold part of a state_dict shares (Hugging Face shards, later GGUF splits).

Each file is read by the single-file readers; :class:`Union` folds what they found into one
tree (the union of their top-level keys), one list of pickles and findings for the verdict
(each naming its file), and one list of files. A file that is missing or unreadable keeps
its place: the tensors something else promised it holds are shown damaged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import NEEDS_TRUST, Finding
from ckpt_inspector.core.io import paths
from ckpt_inspector.core.progress import Cancelled, muted
from ckpt_inspector.core.tree import (
    UNKNOWN_DTYPE,
    Checkpoint,
    Node,
    TensorInfo,
    peek_tensor,
    set_file,
)

# names of the files a folder's loaders pass to torch.load (a Trainer's optimizer.pt and
# rng_state.pth, a .bin of weights, an expert's .pt): a layout reads every such file of its
# folder for the verdict, shown or not
TORCH_LOADED = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def read_file(path: str) -> Checkpoint:
    """One file with the single-file readers; any failure is a :class:`CheckpointError`."""
    from ckpt_inspector.core import formats

    try:
        with muted():  # the layout says which file it reads; not each file's steps
            return formats.open_checkpoint(path)
    except (CheckpointError, Cancelled):
        raise
    except Exception as err:  # a reader bug on one shard must not hide the others
        raise CheckpointError(f"unexpected {type(err).__name__} while reading: {err}") from err


class Union:
    """The checkpoint being built: ``add`` each file's checkpoint, ``missing`` each file
    that is not there, ``unreadable`` each that did not read."""

    def __init__(self, path: str, fmt: str, type_name: str):
        self.root = Node("dict", None, type_name)
        self.ckpt = Checkpoint(path, fmt, self.root)
        self._where: dict[str, str] = {}  # key -> file that holds it

    @property
    def keys(self) -> dict[str, str]:
        return self._where

    def count_transfer(self, transfer: dict[str, int] | None) -> None:
        """Add what reading one remote file took to the checkpoint's ``remote`` totals."""
        if transfer:
            total = self.ckpt.metadata.setdefault("remote",
                                                  {"size": 0, "requests": 0, "bytes": 0})
            for k in total:
                total[k] += transfer.get(k, 0)

    def add_file(self, rel: str, size: int, fmt: str | None, **extra: Any) -> None:
        entry: dict[str, Any] = {"path": rel, "size": size, "format": fmt}
        entry.update({k: v for k, v in extra.items() if v is not None})
        self.ckpt.files.append(entry)
        self.ckpt.file_size += size
        if extra.get("problem") == "missing":
            self.ckpt.findings.append(missing_finding(rel))

    def add(self, rel: str, part: Checkpoint, owner: dict[str, str] | None = None) -> list[str]:
        """Fold ``part`` (the checkpoint of file ``rel``) in; returns the top-level keys it
        holds. ``owner`` (key -> file, from an index) settles a key two files hold."""
        self._absorb_scan(rel, part)
        self.count_transfer(part.metadata.get("remote"))
        root = part.root
        if root is None or not (root.is_container and root.kind == "dict"):
            self.ckpt.findings.append(Finding(
                "info", "not-a-state-dict",
                f"{rel} holds a {root.type_name or root.kind if root else 'nothing'}, not a "
                "dict of tensors: shown under its file name", file=rel))
            if root is not None:
                root.key = rel
                self._put(rel, root, rel)
            return []
        fast = self._add_plain(rel, root.children)
        if fast is not None:
            return fast
        held = []
        where = self._where
        mine = self.root
        kids = mine.children
        for child in list(root.children):
            key = str(child.key)
            held.append(key)
            if child.children or child.tensor is None:
                self._tag(child, rel)
            else:  # a tensor of a state_dict: the common case, 100,000s of them
                child.tensor.file = rel
            first = where.get(key)
            if first is None:  # _put, inlined for the common case
                where[key] = rel
                child.key = key
                child.parent, child.row = mine, len(kids)
                kids.append(child)
                continue
            if first != rel:
                self.ckpt.findings.append(Finding(
                    "info", "duplicate-key",
                    f"{key!r} is in both {first} and {rel}", file=rel))
                if owner is None or owner.get(key) != rel:
                    continue
            self._put(key, child, rel)
        return held

    def _add_plain(self, rel: str, children: list[Node]) -> list[str] | None:
        """:meth:`add` for the common part: tensors under string keys none of the files
        before held (a shard of a state_dict), in one pass and a few calls in C; None
        for anything else (``add`` then goes the general way)."""
        held = [child.key for child in children]
        where = self._where
        if set(map(type, held)) - {str} or not where.keys().isdisjoint(held) or \
                len(set(held)) != len(held):
            return None
        # as the nodes hold them: a TensorInfo still to be made is not made here
        tensors = [peek_tensor(child) for child in children if not child.children]
        if len(tensors) != len(children) or None in tensors:
            return None
        where.update(dict.fromkeys(held, rel))
        for t in tensors:
            set_file(t, rel)
        mine = self.root
        for row, child in enumerate(children, len(mine.children)):
            child.parent = mine
            child.row = row
        mine.children.extend(children)
        return held

    def put(self, key: str, node: Node, rel: str) -> None:
        """One entry read on its own (a layout whose index names each entry)."""
        self._put(key, node, rel)

    def absorb(self, rel: str, part: Checkpoint) -> None:
        """The pickles, findings and warnings of ``part`` (read from ``rel``) for the
        verdict, without its tree."""
        self._absorb_scan(rel, part)

    def damaged(self, key: str, rel: str, problem: str) -> None:
        """A tensor something promised that cannot be read (its shape and dtype unknown)."""
        if key in self._where:
            return
        info = TensorInfo(UNKNOWN_DTYPE, (), problem=problem, file=rel)
        self._put(key, Node("tensor", key, "torch.Tensor", tensor=info), rel)

    def unreadable(self, rel: str, full: str, err: CheckpointError, shown: bool = True
                   ) -> None:
        """A file that exists but did not read: what was read before the failure still
        counts for the verdict, and the checkpoint is not vouched for (what loading that
        file would run is unknown; a safetensors loader would refuse it, but what is not
        read is not called safe). ``shown``: its tensors are part of the tree."""
        partial = err.partial
        if partial is not None:
            self._absorb_scan(rel, partial)
        if shown:
            self.ckpt.warnings.append(f"{rel} cannot be read ({err}): its tensors are shown "
                                      "damaged")
        fmt = partial.format if partial is not None else _sniffed(full)
        why = ("a safetensors loader refuses it too, but a file not read is not called "
               "safe" if fmt == "safetensors" else "what loading it would run is unknown")
        self.ckpt.findings.append(Finding(
            NEEDS_TRUST, "unreadable-file", f"{rel} cannot be read: {err}; {why}", file=rel))

    # -- inside --------------------------------------------------------------------------
    def _put(self, key: str, node: Node, rel: str) -> None:
        old = self._where.get(key)
        self._where[key] = rel
        node.key = key
        if old is None:
            self.root.add(node)
            return
        for i, child in enumerate(self.root.children):  # rare: a duplicate the index settles
            if str(child.key) == key:
                node.parent, node.row = self.root, i
                self.root.children[i] = node
                return

    @staticmethod
    def _tag(node: Node, rel: str) -> None:
        if not node.children:  # a tensor of a state_dict: the common case, 100,000s of them
            if node.tensor is not None:
                node.tensor.file = rel
            return
        for n in node.walk():
            if n.tensor is not None:
                n.tensor.file = rel

    def absorb_layout(self, prefix: str, part: Checkpoint) -> None:
        """Like :meth:`absorb`, for a checkpoint of several files read from the folder
        ``prefix`` names (``""``: this one): each keeps its own file, under ``prefix``."""
        self.ckpt.take_scan(part, lambda f: prefix + (f or "") or None,
                            lambda w: f"{prefix}{w}" if prefix else w)

    def _absorb_scan(self, rel: str, part: Checkpoint) -> None:
        """The part's pickles, findings, warnings and code for the verdict, each naming
        its file."""
        self.ckpt.take_scan(part, lambda _f: rel, lambda w: f"{rel}: {w}")


def loadable_files(folder: str, max_depth: int, limit: int,
                   each_dir: Callable[[str, list[str]], None] | None = None) -> list[str]:
    """The files of a local folder that loaders torch.load (by name), in its subfolders
    down to ``max_depth`` (files of a folder that deep are listed, its subfolders not),
    in a stable order, as paths relative to it; the walk stops after the folder where more
    than ``limit`` were found (the caller tells that from the count). ``each_dir`` sees
    each folder's relative path and file names."""
    found: list[str] = []
    for here, dirs, files in os.walk(folder):
        rel = os.path.relpath(here, folder)
        if (0 if rel == "." else rel.count(os.sep) + 1) >= max_depth:
            dirs[:] = []
        dirs.sort()
        if each_dir is not None:
            each_dir(rel, files)
        found += [f if rel == "." else os.path.join(rel, f) for f in sorted(files)
                  if f.endswith(TORCH_LOADED)]
        if len(found) > limit:
            break
    return found


# files that hold tensors and metadata only: what loads them runs no code from them
_NO_CODE = (".safetensors", ".gguf")


def missing_finding(rel: str) -> Finding:
    """A file of the layout that is not there was not scanned. One that may hold pickles
    (a ``.bin``/``.pt`` shard, a ``.distcp`` file, a ZeRO rank file) could be where a
    payload is: the checkpoint cannot be vouched for (``needs-trust``); a safetensors or
    GGUF file cannot carry code: ``info`` (the scan still says it is incomplete)."""
    if rel.lower().endswith(_NO_CODE):
        return Finding("info", "missing-file", f"{rel} is missing: not scanned (it holds "
                       "no code, but what it holds is unknown)", file=rel)
    return Finding(NEEDS_TRUST, "missing-file", f"{rel} is missing: not scanned; what "
                   "loading the checkpoint with it would run is unknown", file=rel)


def _sniffed(path: str) -> str | None:
    from ckpt_inspector.core import formats

    try:
        return formats.detect_format(path)
    except (CheckpointError, OSError, ValueError):
        return None


def file_size(path: str) -> int:
    try:
        return paths.getsize(path)
    except (OSError, CheckpointError):
        return 0
