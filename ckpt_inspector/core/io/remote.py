"""Checkpoints at a URL, read by byte range through fsspec: ``https://``, ``http://``,
``s3://`` (s3fs), ``gs://`` (gcsfs); ``hf://`` through huggingface_hub itself
(:mod:`~ckpt_inspector.core.io.hub`).

A :class:`RemoteSource` is a :class:`~ckpt_inspector.core.io.source.Source` like a local
file: the readers slice its ``data`` and never know. Slices are served from a cache of
small blocks (structure lies in a few places: a header at the start, a zip's directory at
the end), each missing run of blocks in one ranged request; tensor data goes past the cache
(``range`` gives a :class:`RemoteRange` that fetches its own bytes, in pieces). Every
request and byte is counted (:class:`Transfer`), which is what the budgets are checked on.

Each request carries the ETag the first answer gave (``If-Match``): a file that changes
while it is read fails with one line instead of mixing two versions. Transient failures
(5xx, a dropped connection, a timeout) are tried again a few times with a back-off;
401/403/404 are not.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.io import listings, remote_cache
from ckpt_inspector.core.io.cancel import check_cancelled
from ckpt_inspector.core.io.http_range import TAIL, get_range, probe
from ckpt_inspector.core.io.remote_fs import (
    asked,
    filesystem,
    scheme_of,
    with_retries,
)
from ckpt_inspector.core.io.source import BufferReader, Source
from ckpt_inspector.core.io.urls import redact
from ckpt_inspector.core.tensors import DataSource

BLOCK = 64 << 10  # structure is small and clustered: a 64 KiB block, merged into runs
HEAD_BLOCKS = 4  # the first read of a file's start takes 256 KiB: a safetensors header of
# a few thousand tensors, a torch zip's data.pkl (its first record) come in one request
MAX_CACHED = 512  # blocks kept (32 MiB); a pickle of many records stays cached whole
PIECE = 8 << 20  # tensor data is fetched in pieces of this size
MAX_WHOLE = 256 << 20  # a bare pickle (no zip) is fetched whole, up to this
BESIDE = 2 * BLOCK  # a listed file's start, asked beside the probe: most headers


def _beside(call: Callable[[], Any]) -> Future[Any]:
    """``call()`` on a thread of its own, in this context (a cancel reaches it)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(16, thread_name_prefix="beside")
    return _pool.submit(contextvars.copy_context().run, call)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()

_live: weakref.WeakValueDictionary[str, Transfer] = weakref.WeakValueDictionary()


def live_counts(url: str) -> dict[str, int] | None:
    """What the files at ``url`` (a file's URL, or a folder's: the files under it) have
    taken so far, structure and tensor data alike, while they are open; None if none is."""
    prefix = url.rstrip("/") + "/"
    found = [t for key, t in list(_live.items()) if key == url or key.startswith(prefix)]
    if not found:
        return None
    return {k: sum(getattr(t, k) for t in found) for k in ("size", "requests", "bytes")}


@dataclass
class Transfer:
    """What was asked of the server for one URL: requests made and bytes received."""

    size: int = 0
    requests: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, n: int) -> None:
        with self.lock:
            self.requests += 1
            self.bytes += n

    def to_json(self) -> dict[str, int]:
        return {"size": self.size, "requests": self.requests, "bytes": self.bytes}


class RemoteFile:
    """One remote object: its size and ETag (asked once) and ranged reads of it.

    Over HTTP the first request is a GET of the file's last :data:`TAIL` bytes (a suffix
    range): its ``Content-Range`` gives the size, and those bytes hold what readers look
    for at the end (a zip's directory, a polyglot's end record), so no HEAD is spent.
    Elsewhere the library's ``info`` gives the size (a HEAD, or a listing) and a ranged
    read of those last bytes follows."""

    def __init__(self, url: str, beside: bool = True):
        self.url = url
        check_cancelled()
        # hf:// reads through huggingface_hub itself (:class:`HubFile`), not HfFileSystem
        self.fs, self.path = (None, url) if scheme_of(url) == "hf" else filesystem(url)
        self.transfer = Transfer()
        _live[url] = self.transfer  # for as long as the file is open
        self.tail: tuple[int, bytes] = (0, b"")  # (offset, bytes) the first request gave
        self.cache = remote_cache.entry_for(url)  # structure kept on disk (None: not kept)
        self._lock = threading.Lock()
        self._file: Any = None
        self.generation: str | None = None
        self.head = b""  # the file's first bytes, where they came with the first request
        if scheme_of(url) == "hf":  # the tail gives commit, size, ETag; reads pinned to it
            from ckpt_inspector.core.io.hub import HubFile, first_bytes

            # a file a listing says is larger than the tail (a model's shard): its start,
            # where the header is, asked at once beside the tail, in one round trip
            listed = listings.known_size(url)
            early = None
            if beside and listed is not None and listed > TAIL and \
                    not (self.cache and self.cache.known()):
                early = _beside(lambda: with_retries(lambda: first_bytes(url, BESIDE), url))
            self._file = with_retries(lambda: HubFile(url, TAIL), url)
            size, self.etag, self.tail = self._file.size, self._file.etag, self._file.tail
            self.transfer.count(len(self.tail[1]))
            if early is not None:
                commit, self.head = early.result()
                self.transfer.count(len(self.head))
                if commit != self._file.commit:
                    raise CheckpointError("the file changed on the server while it was being "
                                          "read (a new commit)")
        elif scheme_of(url) in ("http", "https"):
            known = self.cache.known() if self.cache else None  # a 304 means it is current
            size, self.etag, self.tail = with_retries(
                lambda: probe(self.fs, self.path, known), url)
            self.transfer.count(0 if known and self.tail is known[2] else len(self.tail[1]))
        else:
            # The library's file asks ``info`` once (a HEAD on S3) and keeps it as
            # ``details``: opening first spends no second HEAD. s3fs then sends that ETag as
            # ``IfMatch`` on every ranged GET (a replaced object fails as FileExpired), and on
            # a version-aware filesystem (``FSSPEC_S3_VERSION_AWARE=true``) pins VersionId.
            before = asked(self.path)
            self._file = with_retries(lambda: self.fs.open(
                self.path, "rb", block_size=BLOCK, cache_type="none"), url)
            info = self._file.details
            self.transfer.requests += asked(self.path) - before
            if info.get("type") == "directory":
                raise CheckpointError("is a folder, not a file")
            size = info.get("size")
            if size is None:
                raise CheckpointError("the server does not say how large the file is")
            self.etag = info.get("ETag") or info.get("etag") or info.get("blob_id")
            # GCS: every read names the generation the open saw (gcsfs's file does not)
            self.generation = info.get("generation") if scheme_of(url) in ("gs", "gcs") else None
        self.size = self.transfer.size = int(size)
        if not self.tail[1] and self.size:  # as over HTTP: the end in one request, early
            start = max(0, self.size - TAIL)
            self.tail = (start, self.fetch(start, self.size))
        self.cache = self.cache.keep(self.etag, self.size, self.tail) if self.cache and \
            self.etag else None  # without an ETag, nothing says a cached copy is current

    def _open(self) -> Any:
        """The library's file object (s3, gs; hf's own :class:`HubFile`): HTTP goes
        through :func:`~ckpt_inspector.core.io.http_range.get_range` instead."""
        if self._file is None:
            self._file = self.fs.open(self.path, "rb", block_size=BLOCK, cache_type="none")
        return self._file

    def _read(self, start: int, end: int) -> bytes:
        f = self._open()
        f.seek(start)
        return f.read(end - start)

    def fetch(self, start: int, end: int) -> bytes:
        """The bytes ``[start, end)``: one request (more only where a try failed)."""
        end = min(end, self.size)
        if start >= end:
            return b""
        check_cancelled()

        if scheme_of(self.url) in ("http", "https"):
            def call() -> bytes:
                return get_range(self.fs, self.path, start, end, self.etag)
        else:
            def call() -> bytes:
                if self.generation:  # a replaced object's old generation is gone: a 404
                    try:
                        return self.fs.cat_file(self.path, start=start, end=end,
                                                generation=self.generation)
                    except FileNotFoundError:
                        raise CheckpointError("the file changed on the server while it was "
                                              "being read") from None
                with self._lock:
                    return self._read(start, end)

        data = with_retries(call, self.url)
        self.transfer.count(len(data))
        if len(data) != end - start:
            raise CheckpointError(f"the server sent {len(data):,} bytes for a range of "
                                  f"{end - start:,}: the file changed or was cut short")
        return data


class RemoteBuffer:
    """``len`` and slicing over a remote file, from a cache of :data:`BLOCK`-sized blocks:
    what the readers take for ``Source.data``. A slice's missing blocks are fetched as
    runs, one request per run."""

    def __init__(self, file: RemoteFile):
        self.file = file
        self._blocks: dict[int, bytes] = {}
        self._lock = threading.Lock()
        # the whole blocks the first requests already hold: the tail, and the head where it
        # was asked beside it
        for start, data in ((0, file.head), file.tail):
            end = start + len(data)
            for b in range(-(-start // BLOCK),
                           -(-end // BLOCK) if end >= file.size else end // BLOCK):
                self._blocks[b] = data[b * BLOCK - start:(b + 1) * BLOCK - start]
                if file.cache and start == 0 and data:
                    file.cache.put(b * BLOCK, self._blocks[b])

    def __len__(self) -> int:
        return self.file.size

    def __getitem__(self, key: int | slice) -> Any:
        size = self.file.size
        if isinstance(key, int):
            i = key + size if key < 0 else key
            if not 0 <= i < size:
                raise IndexError("index out of range")
            return self.read(i, i + 1)[0]
        start, stop, step = key.indices(size)
        if step != 1:
            raise ValueError("a remote file is sliced with step 1 only")
        return self.read(start, stop)

    def read(self, start: int, stop: int) -> bytes:
        if stop <= start:
            return b""
        tail_start, tail = self.file.tail
        if start >= tail_start and stop <= tail_start + len(tail):  # what the probe brought
            return tail[start - tail_start:stop - tail_start]
        first, last = start // BLOCK, (stop - 1) // BLOCK
        with self._lock:
            wanted = range(first, last + 1)
            if first == 0 and 0 not in self._blocks:  # a file's start holds its header:
                # read ahead there only (not where the start came beside the probe)
                wanted = range(max(last + 1, min(HEAD_BLOCKS, -(-self.file.size // BLOCK))))
            missing = [b for b in wanted if b not in self._blocks and not self._from_disk(b)]
            for run in _runs(missing):
                data = self.file.fetch(run[0] * BLOCK, (run[-1] + 1) * BLOCK)
                for i, b in enumerate(run):
                    self._blocks[b] = data[i * BLOCK:(i + 1) * BLOCK]
                    if self.file.cache:
                        self.file.cache.put(b * BLOCK, self._blocks[b])
            out = b"".join(self._blocks[b] for b in range(first, last + 1))
            self._evict()
        return out[start - first * BLOCK:stop - first * BLOCK]

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        """``bytes.find`` a block at a time (the pickle interpreter looks for line ends)."""
        end = self.file.size if end is None else min(end, self.file.size)
        pos = max(start, 0)
        while pos < end:
            edge = (pos // BLOCK + 1) * BLOCK
            i = self.read(pos, min(end, edge + len(sub) - 1)).find(sub)
            if i >= 0:
                return pos + i
            pos = edge
        return -1

    def fetch(self, start: int, stop: int) -> bytes:
        """The bytes ``[start, stop)`` straight from the server, not kept: tensor data."""
        return self.file.fetch(start, stop)

    def fetched_start(self) -> bytes:
        """The file's first bytes that are held already (whole blocks from the start, in a
        row): what can be read again without a request."""
        with self._lock:
            held = []
            for b in range(len(self._blocks) + 1):
                block = self._blocks.get(b)
                if block is None:
                    break
                held.append(block)
        return b"".join(held)

    def _from_disk(self, b: int) -> bool:
        """Block ``b`` from the disk cache into memory, if it is there and intact."""
        cache, size = self.file.cache, self.file.size
        data = cache.get(b * BLOCK, min(BLOCK, size - b * BLOCK)) if cache else None
        if data is not None:
            self._blocks[b] = data
        return data is not None

    def _evict(self) -> None:
        while len(self._blocks) > MAX_CACHED:  # oldest first (insertion order)
            self._blocks.pop(next(iter(self._blocks)))


def _runs(blocks: list[int]) -> Iterator[list[int]]:
    run: list[int] = []
    for b in blocks:
        if run and b != run[-1] + 1:
            yield run
            run = []
        run.append(b)
    if run:
        yield run


class RemoteRange(DataSource):
    """``length`` bytes at ``offset`` of a remote file: a tensor's data, fetched when asked
    for (and only the piece asked for), never cached with the structure."""

    __slots__ = ("byteorder", "file", "nbytes", "offset")

    def __init__(self, file: RemoteFile, offset: int, length: int, byteorder: str = "little"):
        self.file = file
        self.offset = offset
        self.nbytes = length
        self.byteorder = byteorder

    @property
    def remote(self) -> bool:
        return True

    def buffer(self) -> memoryview:
        return memoryview(b"".join(self.chunks()))

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        return b"".join(self.chunks(offset, length))

    def chunks(self, offset: int = 0, length: int | None = None,
               size: int = PIECE) -> Iterator[bytes]:
        end = self.nbytes if length is None else min(self.nbytes, offset + length)
        for start in range(offset, end, size):
            stop = min(end, start + size)
            yield self.file.fetch(self.offset + start, self.offset + stop)

    def __repr__(self) -> str:
        return f"RemoteRange({self.file.url!r}, {self.offset}, {self.nbytes})"


class RemoteSource(Source):
    """A checkpoint file at a URL."""

    def __init__(self, url: str, whole: bool = False):
        """``whole``: the file is to be read whole (an index), so its start is not asked
        beside the first request."""
        url = redact(url)  # its name is shown: never with the credentials the URL carries
        super().__init__(url)
        self.file = RemoteFile(url, beside=not whole)
        self._buffer = RemoteBuffer(self.file)
        self._whole: bytes | None = None

    @property
    def data(self) -> RemoteBuffer:
        return self._buffer

    def __len__(self) -> int:
        return self.file.size

    def buffer(self) -> bytes:
        """The whole file, for a pickle read in place: up to :data:`MAX_WHOLE` bytes."""
        if self.file.size > MAX_WHOLE:
            raise CheckpointError(
                f"is a bare pickle of {self.file.size:,} bytes: over a URL ckpt-inspector "
                f"reads such files up to {MAX_WHOLE >> 20} MiB (download it to read it)")
        if self._whole is None:
            self._whole = self._buffer.read(0, self.file.size)
        return self._whole

    def read(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise ValueError("negative offset or length")
        return self._buffer.read(offset, min(offset + n, self.file.size))

    def range(self, offset: int, length: int, byteorder: str = "little") -> DataSource:
        return RemoteRange(self.file, offset, length, byteorder)

    def fetched_start(self) -> bytes:
        """The file's first bytes already fetched (no request more)."""
        return self._whole if self._whole is not None else self._buffer.fetched_start()

    def ranges(self) -> Callable[[int, int], DataSource]:
        return functools.partial(RemoteRange, self.file)  # not the block cache

    @property
    def container(self) -> Any:
        return self._buffer

    @property
    def openable(self) -> Any:
        return BufferReader(self._buffer)

    @property
    def transfer(self) -> Transfer:
        return self.file.transfer
