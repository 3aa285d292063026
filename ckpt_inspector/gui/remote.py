"""What the window says and does differently for a checkpoint named by a URL: its name
(the URL's last path component), a URL without its credentials (what is shown and kept),
and the transfer counts ("read 1.3 MiB in 6 requests of 2.0 GiB").

Everything that would call :mod:`os.path` on a tab's path asks :func:`is_url` first.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ckpt_inspector.core.io.opening import is_url
from ckpt_inspector.core.summary import human_bytes

__all__ = ["is_url", "name_of", "normalize", "strip_credentials", "transfer_text"]


def strip_credentials(url: str) -> str:
    """``url`` without a ``user:password@`` part (never shown, never kept)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def name_of(path: str) -> str:
    """A tab's title: a URL's last path component (decoded; the host for a bare one), else
    the path's base name."""
    if not is_url(path):
        return os.path.basename(path.rstrip(os.sep)) or path
    parts = urlsplit(path)
    last = unquote(parts.path.rstrip("/").rpartition("/")[2])
    return last or parts.netloc or path


def stem_of(path: str) -> str:
    """:func:`name_of` without its extension (a default export name)."""
    return os.path.splitext(name_of(path))[0] or "checkpoint"


def normalize(path: str) -> str:
    """What a tab keeps as its path: a URL as typed (less spaces around it), a local path
    made absolute."""
    path = path.strip() if is_url(path.strip()) else path
    return path if is_url(path) else os.path.abspath(path)


def transfer_counts(ckpt: Any) -> dict[str, int] | None:
    """``{"size", "requests", "bytes"}`` of a remote checkpoint: what its files have taken
    so far (tensor data fetched for statistics and plots included), else what reading the
    structure took; None for a local one."""
    remote = getattr(ckpt, "metadata", {}).get("remote")
    if not isinstance(remote, dict):
        return None
    from ckpt_inspector.core.io.paths import dirname, names_a_file
    from ckpt_inspector.core.io.remote import live_counts

    path = str(getattr(ckpt, "path", ""))
    several = bool(getattr(ckpt, "files", None))
    live = live_counts(dirname(path) if several and names_a_file(path) else path)
    return live if live and live["requests"] >= remote.get("requests", 0) else remote


def transfer_text(ckpt: Any) -> str:
    """"read 1.3 MiB in 6 requests of 2.0 GiB" ("" for a local checkpoint)."""
    counts = transfer_counts(ckpt)
    if counts is None:
        return ""
    n = int(counts.get("requests", 0))
    got, size = int(counts.get("bytes", 0)), int(counts.get("size", 0))
    if got == 0 and n and size:  # the server said the disk cache's copy is current
        return (f"structure from the disk cache ({n:,} request{'s' if n != 1 else ''} to "
                f"check it) of {human_bytes(size)}")
    return (f"read {human_bytes(got)} in {n:,} "
            f"request{'s' if n != 1 else ''} of {human_bytes(size)}")
