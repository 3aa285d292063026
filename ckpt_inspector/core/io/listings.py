"""The folder listings of remote URLs asked so far (names, sizes, kinds), kept for the
process: :mod:`~ckpt_inspector.core.io.paths` asks and keeps them, and a remote file reads
its size from them without a request (:func:`known_size`)."""

from __future__ import annotations

import threading
from typing import Any

Listing = dict[str, dict[str, Any]]  # name -> fsspec-style info ("name", "size", "type")

_kept: dict[str, Listing | None] = {}  # folder URL (no trailing /) -> its listing
_lock = threading.Lock()


def get(folder: str) -> tuple[bool, Listing | None]:
    """``(asked, listing)``: whether ``folder`` was listed, and what it held (None: it
    could not be listed)."""
    folder = folder.rstrip("/")
    with _lock:
        return folder in _kept, _kept.get(folder)


def keep(folder: str, listing: Listing | None) -> None:
    with _lock:
        _kept[folder.rstrip("/")] = listing


def forget(folder: str) -> None:
    with _lock:
        _kept.pop(folder.rstrip("/"), None)


def forget_all() -> None:
    with _lock:
        _kept.clear()


def known_size(url: str) -> int | None:
    """A file's size as a listing already asked says it (no request); None if unknown."""
    folder, _sep, name = url.rstrip("/").rpartition("/")
    _asked, listing = get(folder)
    entry = listing.get(name) if listing else None
    if entry is None or entry.get("type") == "directory" or entry.get("size") is None:
        return None
    return int(entry["size"])
