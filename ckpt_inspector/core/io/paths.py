"""What layouts ask of a folder, for a local path or a URL alike: ``isdir``, ``listdir``,
``isfile``, ``getsize``, ``read_bytes``, and URL-aware ``join``/``dirname``/``basename``.

A local path goes to :mod:`os`. A URL goes to its fsspec filesystem: a folder's listing is
asked once (names, sizes, kinds) and answers every later question about its files. Plain
HTTP has no listings: a model there is opened through its index file's URL, its shards
named by the index; a file whose listing is unknown is taken to exist, and reading it says
otherwise (one request either way).
"""

from __future__ import annotations

import os
import posixpath
import threading
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io import listings
from ckpt_inspector.core.io.opening import is_url
from ckpt_inspector.core.io.source import open_regular

_sizes: dict[str, int] = {}  # URL -> size, of the files read whole here
_lock = threading.Lock()


def join(folder: str, rel: str) -> str:
    return posixpath.join(folder, rel) if is_url(folder) else os.path.join(folder, rel)


def dirname(path: str) -> str:
    if is_url(path):
        return posixpath.dirname(path.rstrip("/"))
    return os.path.dirname(path) or "."


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_url(path) else os.path.basename(path)


def _listing(folder: str) -> dict[str, dict[str, Any]] | None:
    """``{name: fsspec info}`` of a folder URL, or None where it cannot be listed."""
    folder = folder.rstrip("/")
    asked, kept = listings.get(folder)
    if asked:
        return kept
    from ckpt_inspector.core.io.remote_fs import filesystem, scheme_of

    listing = None
    if scheme_of(folder) == "hf":
        from ckpt_inspector.core.io import hub
        from ckpt_inspector.core.io.remote_fs import with_retries

        listing = with_retries(lambda: hub.listing(folder), folder)
    elif scheme_of(folder) not in ("http", "https"):  # HTTP lists nothing we can trust
        from ckpt_inspector.core.io.remote_fs import with_retries

        fs, path = filesystem(folder)

        def ls() -> list[dict[str, Any]] | None:
            try:
                return fs.ls(path, detail=True)  # type: ignore[no-any-return]
            except (FileNotFoundError, NotADirectoryError):
                return None

        # the library's own errors: a refusal, a timeout; a 5xx tried again
        entries = with_retries(ls, folder)
        if entries is not None:
            listing = {posixpath.basename(e["name"].rstrip("/")): e for e in entries}
    listings.keep(folder, listing)
    return listing


def forget(folder: str) -> None:
    """Drop a folder's listing (a reload asks again)."""
    listings.forget(folder)
    with _lock:
        _sizes.clear()


def names_a_file(url: str) -> bool:
    """Whether a URL plainly names a file, so no request need ask: a last part with an
    extension (``model.safetensors``), except a Hub repository's own name."""
    scheme, _sep, rest = url.partition("://")
    parts = [p for p in rest.split("/") if p]
    if scheme.lower() == "hf":
        if parts and parts[0] in ("datasets", "spaces", "models"):
            parts = parts[1:]
        if len(parts) <= 2:  # owner/repo[@revision]
            return False
    stem, dot, ext = (parts[-1] if parts else "").rpartition(".")
    return bool(dot and stem and ext.isalnum() and len(ext) <= 12)


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    if names_a_file(path):
        return False
    listing = _listing(path)
    if not listing:
        return False
    # fsspec lists a file as itself
    only = next(iter(listing.values())) if len(listing) == 1 else None
    return not (only is not None and only.get("type") == "file" and
                only.get("name", "").rstrip("/").endswith(basename(path)))


def listdir(path: str) -> list[str]:
    if not is_url(path):
        return os.listdir(path)
    listing = _listing(path)
    if listing is None:
        raise CheckpointError("cannot list a folder at that URL")
    return sorted(listing)


def isfile(path: str) -> bool:
    if not is_url(path):
        return os.path.isfile(path)
    listing = _listing(dirname(path))
    if listing is None:
        return True  # unknown: reading it will say
    entry = listing.get(basename(path))
    return entry is not None and entry.get("type") != "directory"


def getsize(path: str) -> int:
    if not is_url(path):
        return os.path.getsize(path)
    listing = _listing(dirname(path))
    entry = listing.get(basename(path)) if listing else None
    if entry is not None and entry.get("size") is not None:
        return int(entry["size"])
    with _lock:
        if path in _sizes:
            return _sizes[path]
    from ckpt_inspector.core.io.remote import RemoteFile

    return RemoteFile(path).size


def read_bytes(path: str, limit: int) -> bytes:
    """A small file whole (an index, a config): refused past ``limit`` bytes."""
    if not is_url(path):
        size = os.path.getsize(path)
        if size > limit:
            raise CheckpointError(f"{basename(path)} is {size:,} bytes: more than the "
                                  f"{limit:,} ckpt-inspector reads")
        with open_regular(path) as f:  # never a named pipe: it would block for good
            data = f.read(limit + 1)
        if len(data) > limit:
            raise CheckpointError(f"{basename(path)} is more than the {limit:,} bytes "
                                  "ckpt-inspector reads")
        return data
    from ckpt_inspector.core.io.remote import RemoteSource

    src = RemoteSource(path, whole=True)
    with _lock:
        _sizes[path] = len(src)
    if len(src) > limit:
        raise CheckpointError(f"{basename(path)} is {len(src):,} bytes: more than the "
                              f"{limit:,} ckpt-inspector reads")
    return src.read(0, len(src))
