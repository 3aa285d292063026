"""A :class:`Source` is the bytes of one checkpoint file, wherever they are: a local file,
a checkpoint nested in another (a member of an archive, bytes embedded in a pickle), and
later a remote object or one file of a multi-file checkpoint. Readers take a Source, never
a path, so each of these is read the same way.

A source gives its size, random access to its bytes (``data``: a buffer that supports
``len`` and slicing; ``read``), its first bytes (``head``), the ranges of tensor data that
operations read later (``range``), and a per-source cache (``cached``) where detection and
the readers keep what they parse once: a zip directory, a tar listing, the zip's kind.
"""

from __future__ import annotations

import functools
import io
import mmap
import os
import stat
from collections.abc import Callable
from typing import Any, TypeVar

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.tensors import BytesRange, DataSource, FileRange

T = TypeVar("T")
HEAD_BYTES = 64 << 10


class BufferReader(io.RawIOBase):
    """A read-only file object over a buffer that slices (a memory map, a remote file's
    blocks): what zipfile and tarfile want (seek/tell/read), without copying it whole."""

    def __init__(self, raw: Any):
        self.raw, self.pos = raw, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, offset if whence == 0 else
                       self.pos + offset if whence == 1 else len(self.raw) + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        end = len(self.raw) if n is None or n < 0 else min(len(self.raw), self.pos + n)
        data = bytes(self.raw[self.pos:end])
        self.pos = max(self.pos, end)
        return data

    def readinto(self, buffer: Any) -> int:  # what io.BufferedReader reads with
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def span(raw: Any, start: int, stop: int) -> memoryview:
    """``raw[start:stop]`` as a memoryview: in place over bytes or a memory map; fetched
    over a remote file's buffer (which slices but has no buffer protocol)."""
    try:
        return memoryview(raw)[start:stop]
    except TypeError:
        fetch = getattr(raw, "fetch", None)  # a large span (data) past the structure's cache
        big = fetch is not None and stop - start > 1 << 20
        return memoryview(fetch(start, stop) if big else raw[start:stop])


class Source:
    """The bytes of one file. ``name`` is what messages, labels and tensor locations show
    (a path, or ``outer!member`` for a nested checkpoint)."""

    name: str

    def __init__(self, name: str):
        self.name = name
        self._cache: dict[str, Any] = {}
        self._head: bytes | None = None

    # -- bytes -------------------------------------------------------------------------
    @property
    def data(self) -> Any:
        """All the bytes as a read-only buffer (slicing reads only what it covers)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.data)

    @property
    def size(self) -> int:
        return len(self)

    def read(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer at the end of the file)."""
        if offset < 0 or n < 0:
            raise ValueError("negative offset or length")
        return bytes(self.data[offset:offset + n])

    def head(self, n: int = 512) -> bytes:
        """The first ``n`` bytes (up to 64 KiB are read once and kept)."""
        if n > HEAD_BYTES:
            return self.read(0, n)
        if self._head is None:
            self._head = self.read(0, HEAD_BYTES)
        return self._head[:n]

    def buffer(self) -> Any:
        """All the bytes as a real buffer (bytes, a memory map), for a reader that scans
        them in place (the pickle interpreter); a remote source fetches them, within a
        limit."""
        return self.data

    # -- what readers hand to operations ----------------------------------------------
    def range(self, offset: int, length: int, byteorder: str = "little") -> DataSource:
        """A lazy view of ``length`` bytes at ``offset`` (a tensor's storage)."""
        return BytesRange(self.data, offset, length, byteorder)

    def ranges(self) -> Callable[[int, int], DataSource]:
        """What :meth:`range` does, as a callable that holds no more than the views it
        makes do (a file's path, not its map): kept by tensors made when first read."""
        return self.range

    @property
    def container(self) -> str | bytes:
        """What a zip record's data source reads from: a path, or the bytes."""
        return self.data

    @property
    def openable(self) -> Any:
        """What zipfile.ZipFile and tarfile.open take: a path, or a file object over the bytes."""
        return io.BytesIO(self.data)

    @property
    def path(self) -> str | None:
        """The local file these bytes are, whole; None for anything else."""
        return None

    # -- what is parsed once ------------------------------------------------------------
    def cached(self, key: str, make: Callable[[], T]) -> T:
        """``make()`` once per source and key; an exception it raises is raised again on
        every later call (a directory that does not parse does not parse twice)."""
        if key not in self._cache:
            try:
                self._cache[key] = (True, make())
            except Exception as err:  # the same failure each time
                # kept without its traceback, and raised as a copy: the exception raised
                # holds the frames it passes through, one of which holds this source,
                # and a cycle made while reading is never freed (gcpause freezes it)
                self._cache[key] = (False, (type(err), err.args, dict(vars(err))))
                raise
        ok, value = self._cache[key]
        if not ok:
            raise _copy_of(value)  # no name here for it: its traceback holds this frame
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


_SPECIAL = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def open_regular(path: str) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file. A named pipe would block the
    read until something writes to it (forever), a device has no end: both are refused
    with what they are, checked on the opened file itself (no race with a rename)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "Is a directory", path)
        if not stat.S_ISREG(mode):
            what = next((name for test, name in _SPECIAL if test(mode)), "not a regular file")
            raise CheckpointError(f"it is {what}, not a file: not read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class LocalSource(Source):
    """A file on disk, memory-mapped on first use (random access, no read-ahead: readers
    jump between headers and must not page in tensor data)."""

    def __init__(self, path: str | os.PathLike[str]):
        path = os.fspath(path)
        super().__init__(path)
        self._path = path
        self._data: Any = None

    @property
    def data(self) -> Any:
        if self._data is None:
            with open_regular(self._path) as f:
                size = os.fstat(f.fileno()).st_size
                self._data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            if size and hasattr(mmap, "MADV_RANDOM"):
                self._data.madvise(mmap.MADV_RANDOM)
        return self._data

    def read(self, offset: int, n: int) -> bytes:
        if self._data is not None or offset < 0 or n < 0:
            return super().read(offset, n)
        with open_regular(self._path) as f:  # a few bytes need no map
            f.seek(offset)
            return f.read(n)

    def __len__(self) -> int:
        if self._data is None:
            return os.path.getsize(self._path)
        return len(self._data)

    def range(self, offset: int, length: int, byteorder: str = "little") -> DataSource:
        return FileRange(self._path, offset, length, byteorder)

    def ranges(self) -> Callable[[int, int], DataSource]:
        return functools.partial(FileRange, self._path)

    @property
    def container(self) -> str | bytes:
        return self._path

    @property
    def openable(self) -> Any:
        return self._path

    @property
    def path(self) -> str | None:
        return self._path


class BytesSource(Source):
    """Bytes in memory: a checkpoint nested in another one."""

    def __init__(self, name: str, data: Any):
        super().__init__(name)
        self._data = data

    @property
    def data(self) -> Any:
        return self._data


def _copy_of(kept: tuple[type[BaseException], tuple[Any, ...], dict[str, Any]]) -> BaseException:
    """The exception :meth:`Source.cached` kept, made again (its type, args and attributes)."""
    kind, args, attrs = kept
    err = kind.__new__(kind, *args)
    err.args = args
    err.__dict__.update(attrs)
    return err
