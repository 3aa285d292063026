"""An on-disk cache of remote files' *structure*: the blocks a
:class:`~ckpt_inspector.core.io.remote.RemoteBuffer` fetched (headers, a zip's directory,
``data.pkl``) and the tail the first request brought, never tensor data, so that a second
open of the same URL makes no request beyond the freshness check.

Where: ``$CKPT_INSPECTOR_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/ckpt-inspector/remote``
(``~/.cache/ckpt-inspector/remote``). Off with ``CKPT_INSPECTOR_NO_CACHE=1`` (what
``--no-cache`` sets). At most ``CKPT_INSPECTOR_CACHE_MAX`` bytes (``2G`` by default; ``K``,
``M``, ``G`` suffixes), the least recently used entries removed when one is written.

One folder per URL, named by a hash of it (the URL itself is not written: its query may
hold a signature). ``meta`` says which version (ETag, size) the folder holds; each block is
a file named by its offset. Every file is framed with its length and a blake2b digest over
the version, its name and its bytes: a truncated or corrupt file, or one left by another
version, reads as missing and is fetched and written again. Files are written to a
temporary name and renamed, so two processes may share the cache. A URL with credentials
in it (``user:pass@``, a signed or tokened query) is never cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import struct
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

MAX_BYTES = 2 << 30  # 2 GiB
PRUNE_EVERY = 8 << 20  # an entry that keeps growing prunes the cache again after this much
_MAGIC = b"CKIC\x01"
_HEAD = struct.Struct(f"<{len(_MAGIC)}sQ16s")  # magic, length, blake2b-128
_SECRET_QUERY = re.compile(r"sig|signature|token|key|auth|credential|password|secret|session",
                           re.IGNORECASE)
_SIZE = re.compile(r"\s*(\d+)\s*([kmgt]?)i?b?\s*", re.IGNORECASE)


def cache_dir() -> Path:
    """Where the cache lives (see the module's doc)."""
    if os.environ.get("CKPT_INSPECTOR_CACHE_DIR"):
        return Path(os.environ["CKPT_INSPECTOR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ckpt-inspector" / "remote"


def enabled() -> bool:
    return os.environ.get("CKPT_INSPECTOR_NO_CACHE", "").strip().lower() in ("", "0", "false",
                                                                             "no")


def max_bytes() -> int:
    m = _SIZE.fullmatch(os.environ.get("CKPT_INSPECTOR_CACHE_MAX", ""))
    if m is None:
        return MAX_BYTES
    return int(m.group(1)) << (10 * " kmgt".index(m.group(2).lower() or " "))


def cacheable(url: str) -> bool:
    """False for a URL that carries credentials: user:pass@ or a signed/tokened query."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return False
    return not any(_SECRET_QUERY.search(k) for k, _v in parse_qsl(parts.query,
                                                                   keep_blank_values=True))


class Entry:
    """One URL's folder: the version it holds (``etag``, ``size``, ``tail`` offset, or None
    where nothing valid is there yet) and its blocks."""

    def __init__(self, cache: DiskCache, folder: Path):
        self.cache = cache
        self.folder = folder
        self.etag: str | None = None
        self.size = 0
        self.tail = 0
        self._written = 0  # bytes written since the cache was last pruned
        self._room = 1 << 62  # what may still be written before the limit (known once pruned)
        meta = self._read("meta", "")
        if meta is not None:
            try:
                doc = json.loads(meta)
                self.etag, self.size, self.tail = str(doc["etag"]), int(doc["size"]), \
                    int(doc["tail"])
            except (ValueError, KeyError, TypeError):
                self.etag = None

    @property
    def version(self) -> str:
        return f"{self.etag}\0{self.size}"

    def known(self) -> tuple[int, str, tuple[int, bytes]] | None:
        """(size, ETag, (offset, tail bytes)) of the version held, if whole and intact."""
        if self.etag is None:
            return None
        tail = self.get(self.tail, self.size - self.tail)
        return None if tail is None else (self.size, self.etag, (self.tail, tail))

    def keep(self, etag: str, size: int, tail: tuple[int, bytes]) -> Entry:
        """The server says ``etag``/``size`` is current: an older version's blocks are
        dropped and the tail written (then the cache pruned). Returns the entry."""
        if (etag, size, tail[0]) != (self.etag, self.size, self.tail):
            shutil.rmtree(self.folder, ignore_errors=True)
            self.etag, self.size, self.tail = etag, size, tail[0]
            self._write("meta", json.dumps({"etag": etag, "size": size, "tail": tail[0]})
                        .encode(), "")
        if self.get(tail[0], len(tail[1])) is None:
            self.put(tail[0], tail[1])
        if self._written:
            self._prune()
        return self

    def get(self, offset: int, length: int) -> bytes | None:
        """The ``length`` bytes at ``offset``, or None (never written, or not intact)."""
        data = self._read(str(offset), self.version)
        return data if data is not None and len(data) == length else None

    def put(self, offset: int, data: bytes) -> None:
        self._write(str(offset), data, self.version)
        self._room -= len(data)
        if self._written >= PRUNE_EVERY or self._room < 0:
            self._prune()

    def _prune(self) -> None:
        self._written = 0
        self._room = self.cache.limit - self.cache.prune(keep=self.folder)

    # -- files -----------------------------------------------------------------------------
    def _read(self, name: str, version: str) -> bytes | None:
        try:
            raw = (self.folder / name).read_bytes()
        except OSError:
            return None
        if len(raw) < _HEAD.size:
            return None
        magic, length, digest = _HEAD.unpack_from(raw)
        body = raw[_HEAD.size:]
        if magic != _MAGIC or length != len(body) or digest != _digest(version, name, body):
            return None
        return body

    def _write(self, name: str, data: bytes, version: str) -> None:
        """Atomically (a temporary file renamed); a full disk or a vanished folder only
        means the cache is not written."""
        tmp = self.folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(tmp, "wb") as f:
                f.write(_HEAD.pack(_MAGIC, len(data), _digest(version, name, data)))
                f.write(data)
            os.replace(tmp, self.folder / name)
            self._written += _HEAD.size + len(data)
            os.utime(self.folder)  # last use: what pruning orders by
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _digest(version: str, name: str, data: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{version}\0{name}\0".encode())
    h.update(data)
    return h.digest()


class DiskCache:
    """The cache folder ``root``, kept under ``limit`` bytes."""

    def __init__(self, root: Path | str, limit: int = MAX_BYTES):
        self.root = Path(root)
        self.limit = limit

    @classmethod
    def default(cls) -> DiskCache | None:
        """The user's cache, or None when it is turned off."""
        return cls(cache_dir(), max_bytes()) if enabled() else None

    def open(self, url: str) -> Entry | None:
        """The entry of ``url`` (None for a URL with credentials in it)."""
        if not cacheable(url):
            return None
        key = hashlib.blake2b(url.encode(), digest_size=16).hexdigest()
        folder = self.root / key
        with contextlib.suppress(OSError):  # used now: last to be pruned
            os.utime(folder)
        return Entry(self, folder)

    def prune(self, keep: Path | None = None) -> int:
        """Remove the least recently used entries until the cache is under its limit;
        the bytes it holds then."""
        try:
            folders = [p for p in self.root.iterdir() if p.is_dir()]
        except OSError:
            return 0
        sized = []
        for p in folders:
            try:
                sized.append((p.stat().st_mtime, sum(f.stat().st_size for f in p.iterdir()), p))
            except OSError:  # another process removed it meanwhile
                continue
        total = sum(s for _t, s, _p in sized)
        for _t, s, p in sorted(sized, key=lambda x: x[0]):
            if total <= self.limit:
                break
            if p != keep:
                shutil.rmtree(p, ignore_errors=True)
                total -= s
        return total


def entry_for(url: str) -> Entry | None:
    """The user's cache entry for ``url``: None when the cache is off or the URL has
    credentials in it."""
    cache = DiskCache.default()
    return cache.open(url) if cache is not None else None

