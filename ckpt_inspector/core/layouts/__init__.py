"""Checkpoints made of many files, and the entry point every caller uses: :func:`open_checkpoint`.

A *layout* turns a folder (or the index file of one) into one
:class:`~ckpt_inspector.core.tree.Checkpoint` whose tensors live in several files, each read
by the single-file readers of :mod:`ckpt_inspector.core.formats`. Each layout is a module
with ``NAME``, ``detect(path) -> bool`` (a folder or a file: cheap, from names and at most
an index) and ``open(path) -> Checkpoint``; :data:`LAYOUTS` lists them in the order tried.
A path no layout claims is a single file, read as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ckpt_inspector.core import formats
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io.urls import is_url, redact
from ckpt_inspector.core.tree import Checkpoint


@dataclass(frozen=True)
class Layout:
    """One way to read a checkpoint made of several files."""

    name: str
    detect: Callable[[str], bool]
    open: Callable[[str], Checkpoint]
    remote: bool = False  # reads a folder or an index at a URL too


def _layouts() -> tuple[Layout, ...]:
    from ckpt_inspector.core.layouts import dcp, deepspeed, gguf_split, hf_sharded, peft_adapter

    return (Layout(peft_adapter.NAME, peft_adapter.detect, peft_adapter.open, remote=True),
            Layout(hf_sharded.NAME, hf_sharded.detect, hf_sharded.open, remote=True),
            Layout(dcp.NAME, dcp.detect, dcp.open, remote=True),
            Layout(deepspeed.NAME, deepspeed.detect, deepspeed.open, remote=True),
            Layout(gguf_split.NAME, gguf_split.detect, gguf_split.open, remote=True))


LAYOUTS: tuple[Layout, ...] = ()


def layouts() -> tuple[Layout, ...]:
    """The registry, in the order detection tries it (built on first use)."""
    global LAYOUTS
    if not LAYOUTS:
        LAYOUTS = _layouts()
    return LAYOUTS


def layout_for(path: str) -> Layout | None:
    """The first layout that claims ``path`` (a folder or a file), or None."""
    for layout in layouts():
        if layout.detect(path):
            return layout
    return None


def is_checkpoint_folder(path: str | os.PathLike[str]) -> bool:
    """Whether a folder is a checkpoint some layout reads (what the window opens on a
    double-click or a drop, rather than browsing it)."""
    path = os.fspath(path)
    return os.path.isdir(path) and layout_for(path) is not None


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read the structure of a checkpoint: one file, a folder or an index file of a
    checkpoint made of several files. Never runs code from any of them.

    Raises CheckpointError (one line for the user, without the path) when it cannot be
    read; ``err.partial`` then holds what was read so far. A folder that is no known
    layout is refused with the checkpoint files it holds.
    """
    path = os.fspath(path)
    if is_url(path):  # the layouts that read a URL, else one remote file
        path = redact(path)  # shown without its credentials, requested with them
        layout = next((lay for lay in layouts() if lay.remote and lay.detect(path)), None)
        return layout.open(path) if layout is not None else formats.open_checkpoint(path)
    try:
        layout = layout_for(path)
    except OSError as err:
        raise CheckpointError(f"cannot read the folder: {err}") from None
    if layout is not None:
        return layout.open(path)
    if os.path.isdir(path):
        raise CheckpointError(unknown_folder(path))
    try:
        return formats.open_checkpoint(path)
    except CheckpointError as err:
        if not path.endswith(".distcp"):
            raise
        # one rank's items, torch.save archives laid end to end: only .metadata says where
        hint = CheckpointError(
            "is one data file of a torch.distributed.checkpoint; its items are found only "
            "through the checkpoint's .metadata: open the folder that holds both "
            f"({err})")
        hint.partial = getattr(err, "partial", None)
        raise hint from None


MAX_LISTED = 12
MAX_SNIFFED = 500
PICKLE_NAMES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".p", ".model", ".th")


def unknown_folder(path: str) -> str:
    """Why a folder no layout claims is refused: the checkpoint files it holds (each one can
    be opened on its own), or that it holds none."""
    try:
        names = sorted(os.listdir(path))
    except OSError as err:
        return f"is a folder that cannot be listed: {err}"
    found: list[str] = []
    for name in names[:MAX_SNIFFED]:
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        try:
            kind = formats.detect_format(full)
        except (CheckpointError, OSError, ValueError):
            continue
        if kind == "pickle" and not name.lower().endswith(PICKLE_NAMES):
            continue  # many text files start with bytes that read as a pickle opcode
        found.append(f"{name} ({kind})")
    if not found:
        return "is a folder, and holds no checkpoint file ckpt-inspector recognises"
    more = f" and {len(found) - MAX_LISTED} more" if len(found) > MAX_LISTED else ""
    return (f"is a folder in no layout ckpt-inspector knows; it holds {len(found)} "
            f"checkpoint file{'s' if len(found) != 1 else ''}, each readable on its own: "
            + ", ".join(found[:MAX_LISTED]) + more)
